"""Lending in pinned thread pools: a BLAS task that runs alone on a pool of 2 widens its
process-wide OpenBLAS pool onto the idle thread's share (limit 2, helpers on both CPUs; its
own thread keeps its share), and narrows back before a task starts on that share; nothing
widens where the user fixed the slots or set a thread cap.

Read from inside a fresh interpreter: the borrowing task samples its own affinity, every
native helper thread's affinity and CPU time, and ``threadpool_info()`` between matrix
products, each sample stamped on the monotonic clock *before* it is read, so that a sample
stamped after the arriving task started shows what the borrower ran on from then on.
"""

from __future__ import annotations

import os

import pytest
from _helpers import last_json, run_python

CPUS = sorted(os.sched_getaffinity(0))
pytestmark = [
    pytest.mark.threads,
    pytest.mark.skipif(len(CPUS) < 2, reason="a borrower and a lender need 2 CPUs"),
]

#: What the child's tasks share: the borrower's sampling loop.
SAMPLER = """
import json, os, threading, time
import numpy as np
from threadpoolctl import threadpool_info
from pinbackend import _platform
from pinbackend.host import foreign_load

if os.environ.get("GUARD") != "on":
    # Lend even while other programs (another test run) keep the lent CPU busy: these tests
    # are about what widens and when it narrows; the guard has a test of its own.
    foreign_load.FOREIGN_BUSY_LIMIT = float("inf")

def helpers():
    # Native threads that are not Python's: OpenBLAS's helpers.
    python = {thread.native_id for thread in threading.enumerate()}
    return [tid for tid in _platform.list_thread_ids() if tid not in python]

def cpu_ns(tid):
    try:
        return time.clock_gettime_ns(((~tid) << 3) | 6)  # the thread's own CPU clock
    except OSError:
        return 0

def borrow(stop, widened=None, seconds=30, seen=None):
    a = np.random.default_rng(0).random((300, 300))
    samples = []
    start = time.monotonic()
    while not stop.is_set() and time.monotonic() - start < seconds:
        a @ a
        stamp = time.monotonic()
        tids = helpers()
        masks = sorted(set().union(*(_platform.thread_affinities().get(t, ()) for t in tids)))
        own = sorted(os.sched_getaffinity(0))
        blas = max(x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas")
        samples.append([stamp, own, masks, blas, sum(map(cpu_ns, tids))])
        if seen is not None and blas == 2:
            seen.set()
        if widened is not None and sum(s[3] == 2 for s in samples) >= 5:
            widened.set()  # a few widened samples first: the other task may arrive
    return samples
"""

POOL = (
    SAMPLER
    + """
from pinbackend.host.options import PinOptions
from pinbackend.host.threads import PinnedThreadPool, plan_thread_shares, run_capped

stop, widened = threading.Event(), threading.Event()

def arriving():
    stamp = time.monotonic()  # run_capped has taken the loan back before this
    cpus = sorted(os.sched_getaffinity(0))
    time.sleep(0.3)  # the borrower samples meanwhile
    stop.set()
    return {"start": stamp, "cpus": cpus}

# Other programs' pinned threads (another test run's) must not clamp this pool of two.
shares = plan_thread_shares(2, PinOptions(other_pins="ignore"), "test", report=False)
pool = PinnedThreadPool(shares, lend=True)
try:
    first = pool.apply_async(run_capped, (lambda: borrow(stop, widened),))
    if not widened.wait(20):
        stop.set()
    # The idle thread gets a task (the borrower's thread is busy: the pool hands it there).
    second = pool.apply_async(run_capped, (arriving,)) if widened.is_set() else None
    samples = first.get(60)
    report = {"samples": samples, "arriving": second.get(60) if second else None}
finally:
    pool.terminate()
print(json.dumps(report))
"""
)


def _after(samples: list, stamp: float) -> list:
    return [sample for sample in samples if sample[0] > stamp]


def test_a_lone_blas_task_widens_and_narrows_before_a_task_starts_on_the_lent_share():
    report = last_json(run_python(POOL, timeout=120).stdout)
    samples, arriving = report["samples"], report["arriving"]
    home = samples[0][1]
    assert len(home) == 1 and samples[0][3] == 1, samples[:3]
    assert arriving is not None, "never widened: " + repr([s[1:4] for s in samples][-5:])
    # The borrower's own thread kept its share throughout.
    assert all(own == home for _, own, _, _, _ in samples), samples
    # Widened: the limit 2, the helpers on both CPUs, and they computed (their CPU time
    # grew between two widened samples taken before the other task arrived).
    wide = [s for s in samples if s[0] < arriving["start"] and s[2:4] == [CPUS, 2]]
    assert len(wide) >= 2, [s[1:4] for s in samples]
    assert wide[-1][4] > wide[0][4], wide
    # The other task ran on the lent CPU...
    assert arriving["cpus"] == sorted(set(CPUS) - set(home))
    # ...and every sample stamped after it started shows the narrowed state: limit 1, the
    # helpers on the borrower's share.
    later = _after(samples, arriving["start"])
    assert later and all([masks, blas] == [home, 1] for _, _, masks, blas, _ in later), later


#: A lone BLAS task on the joblib front door: once with lending allowed (it widens), then
#: with GATE (it must not).
FRONT_DOOR = (
    SAMPLER
    + """
import sys
from joblib import Parallel, delayed, parallel_config
import pinbackend

def lone_call(**config):
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    try:
        with parallel_config(backend="pinned", other_pins="ignore", **config):
            (samples,) = Parallel(n_jobs=2, prefer="threads")([delayed(borrow)(stop)])
    finally:
        timer.cancel()
    return max(blas for *_, blas, _ in samples)

allowed = lone_call()
gate = sys.argv[1]
if gate == "fixed_slots":
    gated = lone_call(fixed_slots=True)
elif gate == "inner_max_num_threads":
    gated = lone_call(inner_max_num_threads=1)
else:
    os.environ[gate] = "2"  # a thread variable the user set: a cap pinbackend keeps
    gated = lone_call()
print(json.dumps({"allowed": allowed, "gated": gated}))
"""
)


@pytest.mark.parametrize("gate", ["fixed_slots", "inner_max_num_threads", "OPENBLAS_NUM_THREADS"])
def test_joblib_threads_lend_unless_slots_are_fixed_or_the_user_capped_threads(gate):
    code = f"import sys; sys.argv[1:] = [{gate!r}]\n" + FRONT_DOOR
    report = last_json(run_python(code, timeout=120).stdout)
    assert report == {"allowed": 2, "gated": 1}


#: A lone BLAS task while another program spins on every CPU of the pool, then with the
#: guard lifted.
GUARDED = (
    SAMPLER
    + """
import subprocess, sys
from pinbackend.host.options import PinOptions
from pinbackend.host.threads import PinnedThreadPool, plan_thread_shares, run_capped

SPIN = "import os, sys\\nos.sched_setaffinity(0, {int(sys.argv[1])})\\nwhile True: pass"
spinners = [subprocess.Popen([sys.executable, "-c", SPIN, str(cpu)]) for cpu in (0, 1)]
stop, seen = threading.Event(), threading.Event()
shares = plan_thread_shares(2, PinOptions(other_pins="ignore"), "test", report=False)
pool = PinnedThreadPool(shares, lend=True)
try:
    first = pool.apply_async(run_capped, (lambda: borrow(stop, seen=seen),))
    time.sleep(1.5)  # 15 looks of the watch
    while_busy = seen.is_set()
    for spinner in spinners:
        spinner.kill()
        spinner.wait()
    # The same pool, the guard lifted, widens: the guard was what kept it narrow. (Not the
    # spinners' end alone: another test run may keep this machine busy for seconds.)
    foreign_load.FOREIGN_BUSY_LIMIT = float("inf")
    after = seen.wait(20)
    stop.set()
    first.get(60)
finally:
    pool.terminate()
    for spinner in spinners:
        spinner.kill()
        spinner.wait()
print(json.dumps({"while_busy": while_busy, "after": after}))
"""
)


@pytest.mark.skipif(CPUS[:2] != [0, 1], reason="the spinners take CPUs 0 and 1")
def test_no_loan_while_another_program_keeps_the_lent_cpu_busy():
    """A lent core another program keeps busy makes each widened product wait for its
    slower half: no loan then (and, the guard lifted, the same task widens)."""
    report = last_json(run_python(GUARDED, env={"GUARD": "on"}, timeout=120).stdout)
    assert report == {"while_busy": False, "after": True}
