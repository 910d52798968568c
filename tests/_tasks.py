"""Task functions for worker processes (importable by reference from loky workers)."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
import warnings

import psutil

from pinbackend import _platform
from pinbackend.diagnostics import process_report


def report(delay: float = 0.0, openmp: bool = False) -> dict:
    """Sleep (so every worker gets tasks), then say what this process and thread run on.

    With ``openmp``, load scikit-learn's OpenMP runtime (libgomp) first, so that the report
    shows its thread cap too.
    """
    if openmp:
        import sklearn.cluster  # noqa: F401  - loads libgomp
    time.sleep(delay)
    return {**process_report(), "tid": threading.get_native_id()}


class Census:
    """The threads and descendant processes that appear in this process while in the block.

    A thread samples ``/proc`` every few milliseconds: ``threads`` maps each new thread id,
    and ``children`` each new descendant pid, to the CPUs it was ever allowed to run on (for
    a process: any of its threads); ``peak_threads`` and ``peak_children`` are the most seen
    alive at once. The sampling thread itself is left out.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.threads: dict[int, list[int]] = {}
        self.children: dict[int, list[int]] = {}
        self.peak_threads = self.peak_children = 0
        self._done = threading.Event()

    def __enter__(self) -> Census:
        me = psutil.Process()
        self._old_threads = set(_platform.list_thread_ids())
        self._old_children = {child.pid for child in me.children(recursive=True)}
        self._sampler = threading.Thread(target=self._run, args=(me,), daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._sampler.join()

    def _run(self, me: psutil.Process) -> None:
        own = threading.get_native_id()
        while not self._done.wait(self.interval):
            self._sample(me, own)
        self._sample(me, own)

    def _sample(self, me: psutil.Process, own: int) -> None:
        threads = {
            tid: cpus
            for tid, cpus in _platform.thread_affinities().items()
            if tid not in self._old_threads and tid != own
        }
        for tid, cpus in threads.items():
            self.threads[tid] = sorted(cpus.union(self.threads.get(tid, ())))
        alive = 0
        for child in me.children(recursive=True):
            if child.pid in self._old_children:
                continue
            try:
                masks = _platform.thread_affinities(child.pid)
            except OSError:  # it has just exited
                continue
            alive += 1
            self.children[child.pid] = sorted(
                frozenset(self.children.get(child.pid, ())).union(*masks.values())
            )
        self.peak_threads = max(self.peak_threads, len(threads))
        self.peak_children = max(self.peak_children, alive)

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "children": self.children,
            "peak_threads": self.peak_threads,
            "peak_children": self.peak_children,
        }


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


def nested(
    inner_backend: str | None, inner_n_jobs: int = -1, delay: float = 0.2, openmp: bool = False
) -> dict:
    """Run an inner Parallel of 4 :func:`report` tasks; return this worker's report, the
    inner reports, the warnings the inner call gave and the :class:`Census` of the threads
    and processes created under this worker while it ran."""
    from joblib import Parallel, delayed

    kwargs = {} if inner_backend is None else {"backend": inner_backend}
    if openmp:  # before the census: the census is of what the inner Parallel creates
        report(openmp=True)
    with warnings.catch_warnings(record=True) as caught, Census() as census:
        warnings.simplefilter("always")
        inner = Parallel(n_jobs=inner_n_jobs, **kwargs)(
            delayed(report)(delay, openmp) for _ in range(4)
        )
    return {
        "outer": report(openmp=openmp),
        "inner": inner,
        "warnings": [str(w.message) for w in caught],
        **census.to_dict(),
    }


def two_levels(delay: float = 0.2, openmp: bool = False) -> dict:
    """Level 1 of a two-level nest: pinned sub-workers, each running a default Parallel."""
    from joblib import Parallel, delayed

    if openmp:
        report(openmp=True)
    with Census() as census:
        inner = Parallel(n_jobs=-1, backend="pinned")(
            delayed(nested)(None, -1, delay, openmp) for _ in range(4)
        )
    return {"outer": report(openmp=openmp), "inner": inner, **census.to_dict()}


def kmeans_fit(X, n_clusters: int = 3, seed: int = 0) -> dict:
    """Fit scikit-learn's KMeans (OpenMP inside) here; return its centers, this process's
    report and the :class:`Census` of the threads the fit created."""
    from sklearn.cluster import KMeans  # before the census: the import starts BLAS pools

    with Census() as census:
        model = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(X)
    return {"centers": model.cluster_centers_, "report": report(), **census.to_dict()}


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
