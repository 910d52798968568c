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
    from pinbackend.host.holders import list_leases
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


# A released worker (its keeper gave the lease back after IDLE_RELEASE_SECONDS idle) must
# not work on cores another job took meanwhile: loky reads and unpickles the next task,
# arguments included, before running it. Job B (`pinbackend run`) takes the last worker's
# CPU while the pool is idle; then job A sends tasks with a large argument whose first item
# reports, as it is unpickled in the worker, the worker's CPUs and the lease it holds then.
RELEASED_WORKER = """
import json, os, subprocess, sys, time
from joblib import Parallel, delayed
import pinbackend
from pinbackend.host.holders import list_leases

B_CPU, KIND = {b_cpu}, {kind!r}

def unpickled_where():
    from pinbackend.host.state import STATE
    lease = STATE.keeper.lease if STATE.keeper is not None else None
    return {{
        "mask": sorted(os.sched_getaffinity(0)),
        "held": sorted(lease.cores) if lease is not None and lease.held else None,
    }}

class Probe:
    def __reduce__(self):
        return (unpickled_where, ())

def where(_):
    return os.getpid(), sorted(os.sched_getaffinity(0))

def report(big):
    return big[0], sorted(os.sched_getaffinity(0))

def tasks():
    yield from (delayed(where)(i) for i in range(2))
    time.sleep(1.5)  # every worker idle: each gives its lease back
    b = subprocess.Popen([sys.executable, "-m", "pinbackend", "run", "--cores", str(B_CPU),
                          "--", "sleep", "30"])
    state["b"] = b
    while not any(info.pid == b.pid for info in list_leases(scope=None)):
        time.sleep(0.01)
    data = b"x" * 64_000_000 if KIND == "bytes" else list(range(3_000_000))
    yield from (delayed(report)([Probe(), data]) for _ in range(2))

state = {{}}
out = Parallel(n_jobs=2, backend="pinned", batch_size=1, pre_dispatch="2")(tasks())
state["b"].kill()
state["b"].wait()
pinbackend.shutdown_workers()
print(json.dumps({{"results": out[2:]}}))
"""


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs")
@pytest.mark.parametrize("kind", ["bytes", "objects"])
def test_a_released_worker_does_not_read_its_next_task_on_cores_another_job_took(kind):
    # Before the fix the task was unpickled with no lease, on B's CPU (110-670 ms of CPU
    # there, sampled from /proc); now the worker holds a slot of its pool, and is pinned to
    # it, before its next task's arguments are unpickled.
    b_cpu = ALLOWED[-1]
    result = run_python(RELEASED_WORKER.format(b_cpu=b_cpu, kind=kind), timeout=120)
    for unpickled, ran_on in last_json(result.stdout)["results"]:
        assert unpickled["held"] is not None, unpickled  # it held a lease as it unpickled
        assert set(unpickled["mask"]) <= set(unpickled["held"]), unpickled
        assert b_cpu not in unpickled["mask"] and b_cpu not in ran_on, (unpickled, ran_on)


# An idle worker releases its slot (lease back, slot undone): while released it is on the
# CPUs it was started with and holds no lease; its next task claims and applies a slot again.
IDLE_WORKER = """
import json, os, time
from joblib import Parallel, delayed
import pinbackend
from pinbackend.host.holders import list_leases

def masks(pid="self"):
    return sorted({tuple(sorted(os.sched_getaffinity(int(tid))))
                   for tid in os.listdir(f"/proc/{pid}/task")})

def inside(_):
    from pinbackend.host.slot import current_slot
    time.sleep(0.2)  # both workers take tasks
    slot = current_slot()
    return {"pid": os.getpid(), "masks": masks(), "cpu_count": os.cpu_count(),
            "slot": sorted(slot.cores) if slot is not None else None,
            "env": os.environ.get("PINBACKEND_SLOT")}

parallel = Parallel(n_jobs=2, backend="pinned")
first = parallel(delayed(inside)(i) for i in range(4))
time.sleep(1.5)  # every worker idle: each releases its slot
released = {pid: {"masks": masks(pid),
                  "leases": [sorted(l.cores) for l in list_leases(scope=None) if l.pid == pid]}
            for pid in {r["pid"] for r in first}}
second = parallel(delayed(inside)(i) for i in range(4))
pinbackend.shutdown_workers()
print(json.dumps({"first": first, "released": released, "second": second}))
"""


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs")
def test_an_idle_worker_is_unpinned_while_released_and_pinned_again_for_its_next_task():
    data = last_json(run_python(IDLE_WORKER, timeout=120).stdout)
    for result in data["first"] + data["second"]:
        assert result["slot"] is not None and result["masks"] == [result["slot"]], result
        assert result["cpu_count"] == len(result["slot"]) and result["env"], result
    # The same workers ran both calls, and between them each was released and undone.
    assert {r["pid"] for r in data["second"]} <= set(map(int, data["released"]))
    for pid, released in data["released"].items():
        assert released == {"masks": [ALLOWED], "leases": []}, (pid, released)
