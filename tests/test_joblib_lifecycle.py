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


# A released worker (its keeper gave the lease back after IDLE_RELEASE_SECONDS idle) must
# not work on cores another job took meanwhile: loky reads and unpickles the next task,
# arguments included, before running it. Job B (`pinbackend run`) takes the last worker's
# CPU while the pool is idle; then job A sends tasks with a large argument. Every thread of
# A's workers is sampled from /proc (schedstat: nanoseconds on CPU, and its CPU mask).
RELEASED_WORKER = """
import json, os, subprocess, sys, threading, time
import psutil
from joblib import Parallel, delayed
import pinbackend
from pinbackend.host.leases import list_leases

B_CPU, KIND = {b_cpu}, {kind!r}
on_b, state = {{}}, {{"b_holds": False, "stop": False}}

def threads(pid):
    for tid in os.listdir(f"/proc/{{pid}}/task"):
        base = f"/proc/{{pid}}/task/{{tid}}"
        with open(base + "/schedstat") as f:
            ns = int(f.read().split()[0])
        with open(base + "/status") as f:
            mask = next(l.split()[1] for l in f if l.startswith("Cpus_allowed_list"))
        yield tid, ns, mask

def workers():
    for child in psutil.Process().children(recursive=True):
        try:
            if "popen_loky_posix" in " ".join(child.cmdline()):
                yield child.pid
        except psutil.Error:
            pass

def sample():
    last = {{}}
    while not state["stop"]:
        for pid in list(workers()):
            try:
                for tid, ns, mask in list(threads(pid)):
                    before = last.get(tid)
                    last[tid] = (ns, mask)
                    if before and state["b_holds"] and ns > before[0]:
                        cpus = set()
                        for part in before[1].split(","):
                            low, _, high = part.partition("-")
                            cpus.update(range(int(low), int(high or low) + 1))
                        if B_CPU in cpus:
                            on_b[tid] = on_b.get(tid, 0) + ns - before[0]
            except (OSError, StopIteration):
                pass
        time.sleep(0.002)

def where(_):
    return os.getpid(), sorted(os.sched_getaffinity(0))

def size(big):
    return len(big), sorted(os.sched_getaffinity(0))

def tasks():
    yield from (delayed(where)(i) for i in range(2))
    time.sleep(1.5)  # every worker idle: each gives its lease back
    b = subprocess.Popen([sys.executable, "-m", "pinbackend", "run", "--cores", str(B_CPU),
                          "--", "sleep", "30"])
    state["b"] = b
    while not any(info.pid == b.pid for info in list_leases(scope=None)):
        time.sleep(0.01)
    state["b_holds"] = True
    big = b"x" * 64_000_000 if KIND == "bytes" else list(range(3_000_000))
    yield from (delayed(size)(big) for _ in range(2))

threading.Thread(target=sample, daemon=True).start()
out = Parallel(n_jobs=2, backend="pinned", batch_size=1, pre_dispatch="2")(tasks())
state["stop"] = True
time.sleep(0.05)
state["b"].kill()
state["b"].wait()
pinbackend.shutdown_workers()
print(json.dumps({{"on_b_ms": sum(on_b.values()) / 1e6, "results": out[2:]}}))
"""


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs")
@pytest.mark.parametrize("kind", ["bytes", "objects"])
def test_a_released_worker_does_not_read_its_next_task_on_cores_another_job_took(kind):
    # Before the fix: 110-670 ms of CPU on B's core (the pipe read and the unpickling ran
    # before the worker claimed again). Now the worker claims first, and only the claim's
    # polling while it waits for a slot runs there: 1.5-14 ms measured.
    b_cpu = ALLOWED[-1]
    result = run_python(RELEASED_WORKER.format(b_cpu=b_cpu, kind=kind), timeout=120)
    report = last_json(result.stdout)
    assert all(b_cpu not in cpus for _, cpus in report["results"]), report
    assert report["on_b_ms"] < 40, report
