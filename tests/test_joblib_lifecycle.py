"""The joblib backend's failure modes: a worker's claim error, the single-worker case."""

from __future__ import annotations

import os

import pytest
from _helpers import last_json, run_python
from joblib import Parallel, delayed

import pinbackend
from pinbackend.host.leases import LeaseConflict, claim

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = [pytest.mark.slow]


def _slot_of_worker():
    from pinbackend.host.slot import current_slot

    slot = current_slot()
    return os.getpid(), sorted(slot.cores) if slot else None


def _held_by_an_old_worker():
    """Every CPU leased as if by a worker of this process's previous pool, still exiting.

    The parent's plan counts its own pools' workers as its own (it reuses or replaces
    them), so it plans on those CPUs; a new worker then cannot claim them.
    """
    return claim(ALLOWED, owner=os.getpid(), command="a previous pool's worker, exiting")


def test_a_claim_failure_in_a_worker_is_raised_in_the_caller_as_itself():
    try:
        with _held_by_an_old_worker(), pytest.raises(LeaseConflict, match="planned core sets"):
            Parallel(n_jobs=len(ALLOWED), backend="pinned", claim_timeout=0.2)(
                delayed(_slot_of_worker)() for _ in range(4)
            )
    finally:
        pinbackend.shutdown_workers()


def test_a_worker_whose_claim_failed_runs_tasks_once_its_cores_are_free():
    parallel = Parallel(n_jobs=len(ALLOWED), backend="pinned", claim_timeout=0.2)
    try:
        with _held_by_an_old_worker(), pytest.raises(LeaseConflict):
            parallel(delayed(_slot_of_worker)() for _ in range(4))
        # The same (reused) workers claim again before their next task.
        results = parallel(delayed(_slot_of_worker)() for _ in range(4))
        assert all(cores is not None for _, cores in results)
    finally:
        pinbackend.shutdown_workers()


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 CPUs to restrict the caller to one")
@pytest.mark.parametrize("how", ["taskset", "cores_per_worker"])
def test_n_jobs_minus_one_resolving_to_one_worker_still_runs_leased_and_pinned(how):
    """One worker for -1 is a pinned worker holding a lease, never the unleased caller."""
    code = f"""
    import json, os
    from joblib import Parallel, delayed
    import pinbackend
    from pinbackend.host.leases import list_leases
    how = {how!r}
    if how == "taskset":
        os.sched_setaffinity(0, {{{ALLOWED[-1]}}})
        parallel = Parallel(n_jobs=-1, backend="pinned")
    else:
        parallel = Parallel(n_jobs=-1, backend="pinned", cores_per_worker={len(ALLOWED)})
    def task():
        return os.getpid(), [sorted(l.cores) for l in list_leases() if l.pid == os.getpid()]
    results = parallel(delayed(task)() for _ in range(3))
    pinbackend.shutdown_workers()
    print(json.dumps({{"caller": os.getpid(), "results": results}}))
    """
    data = last_json(run_python(code).stdout)
    pids = {pid for pid, _ in data["results"]}
    assert data["caller"] not in pids and len(pids) == 1
    expected = [[ALLOWED[-1]]] if how == "taskset" else [ALLOWED]
    assert all(leases == expected for _, leases in data["results"])
