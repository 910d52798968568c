"""Pinned threads: each thread of a pool on its own disjoint share, its pools capped, read
from inside the thread (``sched_getaffinity(0)`` and threadpoolctl are per thread); the caller
exactly as before once the call returns."""

from __future__ import annotations

import os
import threading

import pytest
from joblib import Parallel, delayed, parallel_config

import pinbackend
from pinbackend.host.holders import list_leases
from pinbackend.host.notices import PoolResizedWarning

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = [
    pytest.mark.threads,
    pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs"),
]


def probe(seconds: float = 0.2) -> dict:
    """What the calling thread sees: its id, mask, pool sizes and the leases held meanwhile."""
    import time

    import numpy  # noqa: F401  (BLAS)
    import sklearn.cluster  # noqa: F401  (scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_info

    time.sleep(seconds)  # every thread of the pool gets tasks
    sizes: dict[str, int] = {}
    for pool in threadpool_info():
        sizes[pool["user_api"]] = max(sizes.get(pool["user_api"], 0), pool["num_threads"])
    return {
        "pid": os.getpid(),
        "tid": threading.get_native_id(),
        "mask": sorted(os.sched_getaffinity(0)),
        "blas": sizes.get("blas"),
        "openmp": sizes.get("openmp"),
        "leases": sorted(sorted(info.cores) for info in list_leases()),
    }


def caller_state() -> dict:
    state = probe(0.0)
    return {key: state[key] for key in ("mask", "blas", "openmp", "leases")}


def assert_pinned_threads(results: list[dict], count: int) -> None:
    """``count`` threads of this process, on disjoint shares, capped to them."""
    by_tid = {r["tid"]: r for r in results}
    assert len(by_tid) == count, by_tid
    masks = [tuple(r["mask"]) for r in by_tid.values()]
    flat = [cpu for mask in masks for cpu in mask]
    assert len(flat) == len(set(flat)), f"threads share cores: {masks}"
    for result in by_tid.values():
        assert result["pid"] == os.getpid()
        assert result["blas"] == result["openmp"] == len(result["mask"]), result
        # While the call runs, the caller holds a lease on every thread's share.
        assert sorted(result["leases"]) == sorted([cpu] for cpu in flat)


@pytest.mark.parametrize("hint", [{"require": "sharedmem"}, {"prefer": "threads"}])
def test_thread_calls_in_the_pinned_context_run_on_pinned_capped_threads(hint):
    before = caller_state()
    with parallel_config(backend="pinned", n_jobs=2):
        results = Parallel(**hint)(delayed(probe)() for _ in range(6))
    assert_pinned_threads(results, 2)
    assert caller_state() == before  # mask, caps and leases exactly as before


def test_prefer_threads_on_parallel_clamps_like_process_pools():
    before = caller_state()
    with pytest.warns(PoolResizedWarning, match=f"runs {len(ALLOWED)} workers instead of 5"):
        results = Parallel(n_jobs=5, backend="pinned", prefer="threads")(
            delayed(probe)() for _ in range(6)
        )
    assert_pinned_threads(results, len(ALLOWED))
    assert caller_state() == before


def sharedmem_inside_a_worker() -> dict:
    """In a pinned worker of 2 cores: a sharedmem call subdivides the worker's slot."""
    import sklearn.cluster  # noqa: F401  (loaded before the call: caps reach loaded libraries)

    from pinbackend.host.slot import current_slot

    results = Parallel(n_jobs=-1, require="sharedmem")(delayed(probe)() for _ in range(6))
    return {
        "slot": sorted(current_slot().cores),
        "worker": probe(0.0),
        "threads": results,
    }


def test_sharedmem_nested_in_a_pinned_worker_subdivides_its_slot():
    try:
        (result,) = Parallel(n_jobs=-1, backend="pinned", cores_per_worker=len(ALLOWED))(
            delayed(sharedmem_inside_a_worker)() for _ in range(1)
        )
    finally:
        pinbackend.shutdown_workers()
    threads = {r["tid"]: r for r in result["threads"]}
    assert len(threads) == len(ALLOWED)
    masks = sorted(tuple(r["mask"]) for r in threads.values())
    assert masks == [(cpu,) for cpu in result["slot"]]
    for thread in threads.values():
        assert thread["pid"] == result["worker"]["pid"]
        assert thread["blas"] == thread["openmp"] == 1
    # The worker's own thread is back on its whole slot with its caps.
    assert result["worker"]["mask"] == result["slot"]
    assert result["worker"]["blas"] == len(ALLOWED)


def test_the_pool_releases_its_leases_even_when_no_task_ran():
    with parallel_config(backend="pinned", n_jobs=2):
        assert Parallel(require="sharedmem")(delayed(abs)(-i) for i in range(0)) == []
    assert list_leases() == []


def test_a_thread_still_running_when_the_call_aborts_keeps_its_cores_until_it_ends():
    """Another task's error aborts the call while one thread runs a long task: nothing can
    stop that thread, so its cores stay leased until its task ends, then are given back."""
    import time

    finished = threading.Event()

    def task(i):
        if i == 0:
            time.sleep(0.2)
            raise ValueError("task 0 fails")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # busy on its pinned core
            pass
        finished.set()
        return os.sched_getaffinity(0)

    with pytest.raises(ValueError, match="task 0 fails"):
        Parallel(n_jobs=2, backend="pinned", prefer="threads", batch_size=1)(
            delayed(task)(i) for i in range(2)
        )
    assert not finished.is_set()
    held_while_running = sorted(sorted(info.cores) for info in list_leases())
    assert finished.wait(10)
    deadline = time.monotonic() + 5
    while list_leases() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(held_while_running) >= 1, "the running thread's cores were given back early"
    assert list_leases() == []
