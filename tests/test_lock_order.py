"""pinbackend's locks and load watch: no lock taken twice by one thread, none inherited held
by a forked child, and libraries that tasks load are capped without asking the loader.

Code that could deadlock runs in a child interpreter under a timeout, so that a regression
fails this test instead of hanging the suite.
"""

from __future__ import annotations

import os

import pytest
from _helpers import last_json, run_python

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.threads

#: These children do a few milliseconds of work; a deadlock never ends, so 60 s is
#: generous on a loaded machine and still fails fast.
CHILD_LIMIT = 60


def test_a_finalizer_in_a_thread_holding_the_cap_lock_runs_after_it_lets_go():
    """The collector may finalize a pinned thread pool (giving back its cores and caps)
    while the very thread it interrupts holds the process-wide cap's lock: that work waits
    for the lock to be let go, instead of waiting for itself forever."""
    code = """
    import gc, json
    from pinbackend.host.state import STATE
    from pinbackend.host.threads import hold_process_wide_cap

    class Pool:  # what a user made, collected only by the cycle collector
        def terminate(self):
            pass
    pool = Pool()
    pool.cycle = pool
    released = []
    hold_process_wide_cap(pool, 1, lambda: released.append("cores"), ("terminate",))
    del pool
    with STATE.blas_cap._lock:
        gc.collect()  # finalizes the pool right here, in this thread
        during = list(released)
    print(json.dumps({"during": during, "after": released}))
    """
    result = last_json(run_python(code, timeout=CHILD_LIMIT).stdout)
    assert result == {"during": [], "after": ["cores"]}


def test_a_forked_child_can_take_every_lock_another_thread_held_at_fork():
    """A child forked while another thread held the lease table's and threadpoolctl's locks
    takes them at once (they are made anew in the child)."""
    code = """
    import json, os, threading
    from pinbackend.host import caps, leases

    held, done = threading.Event(), threading.Event()
    def hold():
        with leases._TABLE_LOCK, caps._THREADPOOLCTL_LOCK:
            held.set()
            done.wait()
    threading.Thread(target=hold).start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        with leases._TABLE_LOCK, caps._THREADPOOLCTL_LOCK:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    done.set()
    print(json.dumps({"child_exit": os.waitstatus_to_exitcode(status)}))
    """
    assert last_json(run_python(code, timeout=CHILD_LIMIT).stdout) == {"child_exit": 0}


def test_the_load_watch_counts_extension_modules_and_calls_listeners_in_order():
    """One count per extension module created; the runner's cap (``first``) runs before the
    pools' process-wide cap; stopping the watch gives the loader its own method back."""
    code = """
    import importlib.machinery, json
    from pinbackend.host import loads

    original = importlib.machinery.ExtensionFileLoader.create_module
    calls = []
    loads.watch_extension_loads()
    loads.add_listener(lambda: calls.append("pools"))
    loads.add_listener(lambda: calls.append("runner"), first=True)
    before = loads.generation()
    import _ctypes_test, _testbuffer  # two extension modules nothing here loaded before
    after = loads.generation()
    loads.stop_watching()
    print(json.dumps({
        "counted": after - before,
        "calls": calls,
        "restored": importlib.machinery.ExtensionFileLoader.create_module is original,
    }))
    """
    result = last_json(run_python(code, timeout=CHILD_LIMIT).stdout)
    assert result == {"counted": 2, "calls": ["runner", "pools"] * 2, "restored": True}


@pytest.mark.slow
@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs for two pinned threads")
def test_libraries_a_task_loads_are_capped_in_every_pinned_thread_and_restored_after():
    """Tasks load SciPy's own OpenBLAS (a process-wide pool) and scikit-learn's OpenMP
    runtime (per-thread limits) for the first time: every later task, on either thread,
    runs them capped to its share (one CPU). Loaded in a pinned thread, each would size
    itself by that thread's share for good: after the call, the caller runs both at the
    size they get when loaded unpinned (every allowed CPU), as under joblib's threads."""
    code = """
    import json, os, threading
    import numpy
    import pinbackend
    from joblib import Parallel, delayed
    from threadpoolctl import threadpool_info

    def sizes():
        found = {}
        for pool in threadpool_info():
            name = os.path.basename(pool["filepath"]).split(".")[0]
            found[name] = pool["num_threads"]
        return found

    pair = threading.Barrier(2, timeout=30)  # tasks run two at a time: one per thread

    def task(i):
        if i == 0:
            import scipy.linalg  # libscipy_openblas: new, process-wide
            import sklearn.utils._openmp_helpers  # libgomp: new, limits per thread
        pair.wait()
        return {"tid": threading.get_native_id(), "sizes": sizes()}

    results = Parallel(n_jobs=2, backend="pinned", prefer="threads", batch_size=1)(
        delayed(task)(i) for i in range(8)
    )
    print(json.dumps({"later": results[2:], "caller_after": sizes()}))
    """
    result = last_json(run_python(code, timeout=CHILD_LIMIT).stdout)
    later = result["later"]
    assert len({r["tid"] for r in later}) == 2, later  # both threads ran later tasks
    for report in later:
        loaded = report["sizes"]
        assert any(name.startswith("libscipy_openblas") for name in loaded), loaded
        assert any(name.startswith("libgomp") for name in loaded), loaded
        assert set(loaded.values()) == {1}, report
    caller = result["caller_after"]
    loaded_in_tasks = [
        size for name, size in caller.items() if name.startswith(("libscipy_openblas-", "libgomp"))
    ]
    assert len(loaded_in_tasks) == 2, caller
    assert set(loaded_in_tasks) == {len(ALLOWED)}, caller
