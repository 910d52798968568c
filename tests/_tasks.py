"""Task functions for worker processes (importable by reference from loky workers)."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil

from pinbackend.diagnostics import process_report


def report(delay: float = 0.0) -> dict:
    """Sleep (so every worker gets tasks), then say what this process runs on."""
    time.sleep(delay)
    return process_report()


def blas_product(size: int = 200) -> float:
    """A little BLAS work."""
    import numpy as np

    a = np.random.default_rng(0).random((size, size))
    return float((a @ a).sum())


def die(how: str) -> None:
    """End this worker abruptly."""
    if how == "exit":
        os._exit(1)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)


def nested(inner_backend: str | None, inner_n_jobs: int = -1, delay: float = 0.2) -> dict:
    """Run an inner Parallel; return this worker's report, the inner reports and the
    processes and threads created under this worker while the inner call ran."""
    from joblib import Parallel, delayed

    me = psutil.Process()
    peak = {"children": set(), "threads": me.num_threads()}

    def sample(r):
        peak["children"] |= {c.pid for c in me.children(recursive=True)}
        peak["threads"] = max(peak["threads"], me.num_threads())
        return r

    kwargs = {} if inner_backend is None else {"backend": inner_backend}
    inner = [
        sample(r)
        for r in Parallel(n_jobs=inner_n_jobs, return_as="generator", **kwargs)(
            delayed(report)(delay) for _ in range(4)
        )
    ]
    return {
        "outer": process_report(),
        "inner": inner,
        "children": sorted(peak["children"]),
        "threads": peak["threads"],
    }


def two_levels(delay: float = 0.2) -> dict:
    """Level 1 of a two-level nest: pinned sub-workers, each running a default Parallel."""
    from joblib import Parallel, delayed

    inner = Parallel(n_jobs=-1, backend="pinned")(
        delayed(nested)(None, -1, delay) for _ in range(4)
    )
    return {"outer": process_report(), "inner": inner}


def pool_size_inside() -> dict:
    """How big do the usual auto-sized pools get inside this worker?"""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    import joblib

    with multiprocessing.get_context("spawn").Pool() as pool:
        mp_size = pool._processes
    with ThreadPoolExecutor() as executor:
        tpe_size = executor._max_workers
    return {
        "os_cpu_count": os.cpu_count(),
        "joblib_cpu_count": joblib.cpu_count(),
        "mp_pool": mp_size,
        "thread_pool_executor": tpe_size,
        "affinity": sorted(os.sched_getaffinity(0)),
    }
