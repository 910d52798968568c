"""The joblib backend's edge cases: the single-worker case, a released worker's next task.

A worker's failed claim and idle release are in test_behaviours (every front door)."""

from __future__ import annotations

import os

import pytest
from _helpers import last_json, run_python

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = [pytest.mark.slow]


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
