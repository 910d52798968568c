"""The fork-after-OpenMP hazard: detect it before a pool forks, and start that pool safely.

GNU OpenMP (libgomp) keeps its worker threads in a per-thread pool. A forked child inherits
that bookkeeping but not the threads, so its first parallel region with more than one thread
waits forever for threads that do not exist (GCC bug 52303; seen with scikit-learn's KMeans
under joblib's ``multiprocessing`` backend). LLVM's libomp and Intel's libiomp reset
themselves in the child (a ``pthread_atfork`` handler), so they are not the hazard.

Two things make a forked worker safe: the runner's workers cap OpenMP to their slot size
before any task runs, and with 1 CPU per worker libgomp never touches its pool. So a fork
pool is switched to ``forkserver`` only when some slot has more than one CPU and libgomp has
started threads in this process; a warning says so.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Sequence

from .. import _platform
from . import _warnings

__all__ = ["fork_hazard", "safe_context"]


def fork_hazard() -> str | None:
    """Return the path of a GNU OpenMP runtime that has started threads here, or None.

    threadpoolctl finds libgomp; whether it started threads is inferred from the thread
    count: threads that neither Python nor the OpenBLAS pools (``num_threads - 1`` each)
    account for are taken to be OpenMP's. The guess errs towards "started", which only
    costs a forkserver start.
    """
    from threadpoolctl import threadpool_info

    pools = threadpool_info()
    gomp = [p for p in pools if p.get("internal_api") == "openmp" and p.get("prefix") == "libgomp"]
    if not gomp:
        return None
    explained = len(threading.enumerate()) + sum(
        max(p.get("num_threads", 1) - 1, 0) for p in pools if p.get("internal_api") == "openblas"
    )
    try:
        native = len(_platform.list_thread_ids())
    except OSError:
        native = explained + 1  # cannot count: assume the worst
    if native <= explained:
        return None
    return gomp[0].get("filepath") or "libgomp"


def safe_context(context, slots: Sequence[frozenset[int]], what: str):
    """``context``, or a forkserver context when forking it could hang the workers."""
    if context.get_start_method() != "fork":
        return context
    if max(len(slot) for slot in slots) <= 1:
        return context  # 1-CPU workers run OpenMP single-threaded: libgomp's pool is unused
    runtime = fork_hazard()
    if runtime is None:
        return context
    _warnings.warn(
        _warnings.ForkAfterOpenMPWarning,
        f"{what} would fork this process after GNU OpenMP ({os.path.basename(runtime)}) "
        f"started threads in it; forked workers can hang in their first OpenMP region, so "
        f"this pool starts its workers with 'forkserver' instead (they import your script "
        f"as __mp_main__ and get their arguments pickled, as with 'spawn')",
    )
    return multiprocessing.get_context("forkserver")
