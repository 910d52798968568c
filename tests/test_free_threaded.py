"""Pinned threads where threads really run in parallel (free-threaded CPython, ``tox -e ft``).

Under the GIL, two threads rarely interleave inside a few bytecodes of pinbackend's own code;
without it they do, on every core. The checks here run on every build; the free-threaded
environment (``tox -e ft``, :envvar:`PINBACKEND_EXPECT_FREE_THREADED` set) also asserts that
the GIL is really off in the interpreter it tests with, with every module the thread tests
load imported, and never forced off by ``PYTHON_GIL=0``.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import warnings

import pytest
from _helpers import last_json, run_python
from joblib import Parallel, delayed

ALLOWED = sorted(os.sched_getaffinity(0))
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
#: Set by ``tox -e ft``: there, a build with the GIL is a broken environment, not a skip.
EXPECT_FREE_THREADED = os.environ.get("PINBACKEND_EXPECT_FREE_THREADED") == "1"

pytestmark = pytest.mark.threads

#: Every module the thread tests load, imported in one fresh interpreter. An extension that
#: does not declare free-threading support turns the GIL back on as it loads, with a
#: RuntimeWarning that names it.
GIL_CHECK = """
import json, os, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import numpy, numpy.random, scipy.linalg, sklearn.cluster, sklearn.ensemble
    import joblib, psutil, threadpoolctl, pinbackend
    from joblib import Parallel, delayed
    Parallel(n_jobs=2, backend="pinned", prefer="threads")(delayed(abs)(-i) for i in range(4))
print(json.dumps({
    "gil": sys._is_gil_enabled(),
    "forced": os.environ.get("PYTHON_GIL"),
    "warnings": [str(w.message) for w in caught if "GIL" in str(w.message)],
}))
"""


@pytest.mark.skipif(
    not (FREE_THREADED or EXPECT_FREE_THREADED), reason="not a free-threaded build (tox -e ft)"
)
def test_the_gil_is_off_in_the_interpreter_the_thread_tests_run_on():
    assert FREE_THREADED, (
        f"{sys.executable} has the GIL (Py_GIL_DISABLED unset), but the environment expects a "
        f"free-threaded build: run tools/free_threaded_python.sh and tox -e ft -r"
    )
    assert not sys._is_gil_enabled(), "the GIL is on in the test process itself"
    env = {key: value for key, value in os.environ.items() if key != "PYTHON_GIL"}
    result = last_json(run_python(GIL_CHECK, env=env, timeout=120).stdout)
    assert result == {"gil": False, "forced": None, "warnings": []}, result


def _many_at_once(count: int, work) -> list:
    """Run ``work()`` in ``count`` threads released together; their results."""
    start = threading.Barrier(count, timeout=30)
    results: list = [None] * count

    def run(index: int) -> None:
        start.wait()
        results[index] = work()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_one_time_warning_is_given_once_when_many_threads_ask_at_once(process_state):
    """``warn_once`` is a check and an add: without the GIL, threads that ask together
    each saw the key missing (8 threads, 300 keys: duplicates seen on 3.13t before the fix)."""
    for round_ in range(300):
        answers = _many_at_once(8, lambda key=f"stress {round_}": process_state.warn_once(key))
        assert answers.count(True) == 1, (round_, answers)


def short_task(i: int) -> tuple:
    """A few microseconds of BLAS on this thread; which thread, and on which CPUs. Every
    25th task also reads this thread's pool caps back (threadpoolctl reads /proc each time)."""
    import numpy as np
    from threadpoolctl import threadpool_info

    value = float((np.full((8, 8), float(i)) @ np.ones((8, 8)))[0, 0])
    caps = None
    if i % 25 == 0:
        caps = {}
        for pool in threadpool_info():
            caps[pool["user_api"]] = max(caps.get(pool["user_api"], 0), pool["num_threads"])
    return threading.get_native_id(), tuple(sorted(os.sched_getaffinity(0))), caps, value


@pytest.mark.slow
@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs")
@pytest.mark.timeout(120)  # 20 calls of 1000 tasks take 5-12 s on 2 busy cores
def test_many_short_tasks_on_pinned_threads_stay_on_their_share_with_their_caps():
    """20 pinned thread pools, one after the other, each running 1000 short tasks on every
    core: each thread on one core of its own for all its tasks, its BLAS and OpenMP capped
    to it, every result right; after each call the caller's mask, caps and leases as
    before, and nothing of the pools left in the process state."""
    import sklearn.cluster  # noqa: F401  (an OpenMP runtime, capped per thread)
    from threadpoolctl import threadpool_info

    from pinbackend.host.holders import list_leases
    from pinbackend.host.state import STATE

    def caller() -> tuple:
        sizes = sorted((p["user_api"], p["num_threads"]) for p in threadpool_info())
        return tuple(sorted(os.sched_getaffinity(0))), sizes, list_leases()

    before = caller()
    for call in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            results = Parallel(n_jobs=-1, backend="pinned", prefer="threads")(
                delayed(short_task)(i) for i in range(1000)
            )
        assert [value for *_, value in results] == [8.0 * i for i in range(1000)]
        masks: dict[int, set] = {}
        for tid, mask, caps, _ in results:
            masks.setdefault(tid, set()).add(mask)
            if caps is not None:
                assert caps.get("blas") == caps.get("openmp") == len(mask), (call, caps, mask)
        assert all(len(seen) == 1 for seen in masks.values()), (call, masks)
        flat = [cpu for (mask,) in masks.values() for cpu in mask]
        assert len(flat) == len(set(flat)), f"call {call}: threads shared cores: {masks}"
        assert caller() == before, call
        with STATE.running_lock:
            assert not STATE.running_tasks, call
        assert STATE.blas_cap is None or not STATE.blas_cap._active, call


def test_a_cap_controller_registered_by_many_threads_at_once_is_registered_once():
    """``register`` checks the registry, then appends: without the GIL, threads that
    register the same kind of controller together each found it missing."""
    from pinbackend.host import caps

    saved = list(caps.CAPS)
    try:
        for round_ in range(200):
            kind = type(f"Stress{round_}", (caps.CapController,), {"name": f"stress{round_}"})
            _many_at_once(8, lambda kind=kind: caps.register(kind()))
            registered = [cap for cap in caps.CAPS if type(cap) is kind]
            assert len(registered) == 1, (round_, registered)
    finally:
        caps.CAPS[:] = saved
