"""Lending: a pool worker whose BLAS task runs alone borrows its idle sibling's core (its
OpenBLAS pool and that pool's helper threads widen; the task's own thread keeps its slot),
and gives it back before anyone else runs there: the sibling's next task, or another job's
claim (read back from inside the tasks).

The jobs are real ``Parallel(n_jobs=2)`` calls of the pinned backend; the borrower samples
its own affinity and ``threadpool_info()`` between matrix products, each sample stamped on
the system's monotonic clock *before* it is read, so that a sample stamped after the other
task (or job) started shows what the borrower ran on from then on.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _helpers import last_json, run_python

from pinbackend.host.wants import Wants, post_want, remove_dead_wants, withdraw_want

CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="a borrower and a lender need 2 CPUs")

JOB = """
import json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_info
import pinbackend
from pinbackend import _platform

folder = Path(sys.argv[1])
then = sys.argv[2]

def borrower():
    a = np.random.default_rng(0).random((300, 300))
    samples = []
    start = time.monotonic()
    while not (folder / "stop").exists() and time.monotonic() - start < 30:
        a @ a
        stamp = time.monotonic()
        own = sorted(os.sched_getaffinity(0))  # the task's thread
        every = sorted(set().union(*_platform.thread_affinities().values()))
        blas = max(x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas")
        samples.append((stamp, own, every, blas))
        if len(every) == 2 and not (folder / "widened").exists():
            (folder / "widened").write_text(str(*samples[0][1]))  # the home CPU
    return {"pid": os.getpid(), "samples": samples}

def arriving():
    stamp = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    time.sleep(0.3)  # the borrower samples meanwhile
    (folder / "stop").touch()
    return {"pid": os.getpid(), "start": stamp, "cpus": cpus}

def wait_for_widening():
    deadline = time.monotonic() + 20
    while not (folder / "widened").exists() and time.monotonic() < deadline:
        time.sleep(0.01)

def second_call():
    # The pool's idle worker gets a task: a second call on the same executor, from a thread
    # (joblib takes n_jobs tasks from a generator at once: a generator cannot hold one back).
    wait_for_widening()
    return Parallel(n_jobs=2, backend="pinned", other_pins="ignore")([delayed(arriving)()])

def other_job():
    # Another job claims the borrowed core (a plain claim: no time to wait but the recall).
    wait_for_widening()
    home = int((folder / "widened").read_text())
    lent = next(cpu for cpu in os.sched_getaffinity(0) if cpu != home)
    code = ("import os, time; start = time.monotonic(); cpus = os.sched_getaffinity(0)\\n"
            "while time.monotonic() - start < 0.2: pass\\n"
            "print(start, time.monotonic(), *sorted(cpus))")
    other = subprocess.run(
        [sys.executable, "-m", "pinbackend", "run", "--cores", str(lent), "--other-pins",
         "ignore", "--", sys.executable, "-c", code], capture_output=True, text=True)
    time.sleep(0.3)
    (folder / "stop").touch()
    return [other.returncode, other.stdout, other.stderr]

with ThreadPoolExecutor(1) as threads:
    then = threads.submit(second_call if then == "task" else other_job)
    first = Parallel(n_jobs=2, backend="pinned", other_pins="ignore")([delayed(borrower)()])
    print(json.dumps({"borrower": first[0], "then": then.result()}))
"""


def run_job(*args: str):
    """Run JOB with ``args`` as its arguments."""
    return run_python(f"import sys; sys.argv[1:] = {list(args)!r}\n" + JOB, timeout=120)


def _after(samples: list, stamp: float) -> list:
    return [sample for sample in samples if sample[0] > stamp]


@needs_two
def test_a_lone_blas_task_borrows_the_idle_core_and_gives_it_back_to_the_next_task(tmp_path):
    proc = run_job(str(tmp_path), "task")
    report = last_json(proc.stdout)
    borrower, (arriving,) = report["borrower"], report["then"]
    samples = borrower["samples"]
    home = samples[0][1]
    assert len(home) == 1 and samples[0][2:] == [home, 1], report
    # The task's own thread kept its slot; the OpenBLAS helpers borrowed the other CPU, and
    # the pool was raised to 2 threads.
    assert all(own == home for _, own, _, _ in samples), report
    assert [CPUS, 2] in [[every, blas] for _, _, every, blas in samples], report
    # The next task ran in the other worker, on the lent core...
    assert arriving["pid"] != borrower["pid"] and arriving["cpus"] == sorted(set(CPUS) - set(home))
    # ...and from its start on, every thread of the borrower ran on its own core, 1 thread.
    later = _after(samples, arriving["start"])
    assert later and all([every, blas] == [home, 1] for _, _, every, blas in later)


@needs_two
def test_another_jobs_claim_gets_a_borrowed_core_at_once(tmp_path):
    """``run --cores`` claims the borrowed CPU without a wait of its own: the claim's want
    makes the borrower give it back."""
    report = last_json(run_job(str(tmp_path), "job").stdout)
    status, out, err = report["then"]
    assert status == 0, err
    start, end, cpu = out.split()
    samples = report["borrower"]["samples"]
    home = samples[0][1]
    assert len(home) == 1 and [int(cpu)] == sorted(set(CPUS) - set(home))
    assert [CPUS, 2] in [[every, blas] for _, _, every, blas in samples]
    # While the other job ran there, every thread of the borrower ran on its own core, with
    # 1 BLAS thread (it may borrow again once the job left).
    meanwhile = [sample for sample in _after(samples, float(start)) if sample[0] < float(end)]
    assert meanwhile and all([every, blas] == [home, 1] for _, _, every, blas in meanwhile)


def test_wants_are_read_per_scope_and_a_dead_processs_want_is_dropped(lease_registry):
    mine = post_want("", frozenset({3}))
    other_scope = post_want("abc123", frozenset({5}))
    assert mine is not None and other_scope is not None
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pinbackend.host.wants import post_want; print(post_want('', frozenset({7})))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert os.path.exists(dead)
    # This process's own wants are not for itself; another live process's are.
    assert Wants("").cpus() == frozenset()
    helper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pinbackend.host.wants import post_want\n"
            "print(post_want('', frozenset({1, 2})), flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        posted = helper.stdout.readline().strip()
        assert Wants("").cpus() == frozenset({1, 2})
        assert Wants("abc123").cpus() == frozenset()
        assert not os.path.exists(dead)  # read by the look above: its process has ended
    finally:
        helper.kill()
        helper.wait()
        helper.stdout.close()
    remove_dead_wants()
    assert not os.path.exists(posted)
    withdraw_want(mine)
    withdraw_want(other_scope)
    assert not (lease_registry / "wants").exists()  # removed with its last want


FIXED = """
import json, os, time
import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_info
from pinbackend import _platform

def alone():
    a = np.random.default_rng(0).random((300, 300))
    seen = set()
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        a @ a
        every = set().union(*_platform.thread_affinities().values())
        blas = max(x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas")
        seen.add((len(every), blas))
    return sorted(seen)

print(json.dumps(Parallel(n_jobs=2, backend="pinned", fixed_slots=True)([delayed(alone)()])))
"""


@needs_two
def test_fixed_slots_keep_a_lone_task_on_its_own_slot():
    # The same lone BLAS task as above borrows within a few tenths of a second; here, never.
    assert last_json(run_python(FIXED, timeout=120).stdout) == [[[1, 1]]]


NESTED_THREADS = """
import json, os, time
import numpy as np
from joblib import Parallel, delayed
import pinbackend
from pinbackend.host.holders import list_leases
from pinbackend.host.threads import PinnedThreadPool, ThreadShares

def loans_of(pid):
    return [sorted(info.cores) for info in list_leases() if info.loan and info.pid == pid]

def inner(_):
    return loans_of(os.getpid())

def outer():
    a = np.random.default_rng(0).random((300, 300))
    start = time.monotonic()
    while not loans_of(os.getpid()) and time.monotonic() - start < 20:
        a @ a
    before = loans_of(os.getpid())
    # A pinned thread pool on the worker's slot (what the runner makes of a ThreadPool a
    # task starts; joblib's prefer="threads" runs inline in a one-core slot).
    pool = PinnedThreadPool(ThreadShares((frozenset(os.sched_getaffinity(0)),)))
    try:
        during = pool.map(inner, range(2))
    finally:
        pool.close()
        pool.join()
    return {"before": before, "during": during}

out = Parallel(n_jobs=2, backend="pinned", other_pins="ignore")([delayed(outer)()])
print(json.dumps(out[0]))
"""


@needs_two
def test_a_pinned_thread_pool_started_in_a_borrowing_task_gets_the_loans_back_first():
    """The process-wide BLAS cap of a pinned thread pool is the pool's: a pool worker's loan
    is given back before the cap is set (else the widened size is saved as the size to
    restore, and giving the loan back later overrides the cap)."""
    report = last_json(run_python(NESTED_THREADS, timeout=120).stdout)
    assert report["before"], report  # it borrowed the idle sibling's core
    assert report["during"] == [[], []], report  # and held no loan while the pool lived


GUARDED = """
import json, os, subprocess, sys, time
import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_info
import pinbackend
from pinbackend.host import foreign_load

SPIN = "import os, sys\\nos.sched_setaffinity(0, {int(sys.argv[1])})\\nwhile True: pass"

def widest(seconds):
    a = np.random.default_rng(0).random((300, 300))
    most, start = 1, time.monotonic()
    while time.monotonic() - start < seconds:
        a @ a
        most = max(most, *(x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas"))
        if most > 1 and seconds > 5:
            break
    return most

def task():
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN, str(cpu)]) for cpu in (0, 1)]
    try:
        while_busy = widest(1.5)  # 15 looks of the keeper
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    # The guard lifted, the same task widens: the guard was what kept it narrow (not the
    # spinners' end alone: another test run may keep this machine busy for seconds).
    foreign_load.FOREIGN_BUSY_LIMIT = float("inf")
    return {"while_busy": while_busy, "after": widest(20)}

print(json.dumps(Parallel(n_jobs=2, backend="pinned", other_pins="ignore")([delayed(task)()])[0]))
"""


@pytest.mark.skipif(CPUS[:2] != [0, 1], reason="the spinners take CPUs 0 and 1")
def test_no_loan_while_another_program_keeps_the_idle_slots_cpu_busy():
    """A program that holds no lease (and is not looked for: other_pins="ignore") keeps the
    idle sibling's CPU busy: a BLAS call widened there would wait for its slower half."""
    report = last_json(run_python(GUARDED, timeout=120).stdout)
    assert report == {"while_busy": 1, "after": 2}
