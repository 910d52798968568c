"""Cap the thread pools of native libraries (BLAS, OpenMP, TBB, numba, numexpr).

Two moments matter. Before a process starts, its environment sets the pools' sizes at load
time (:func:`thread_env` returns those variables as a dict; it never touches ``os.environ``).
After it started, libraries already loaded are capped at run time (:func:`cap_threads`), one
small adapter per library kind, as threadpoolctl does for its controllers.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import ClassVar

__all__ = ["THREAD_ENV_VARS", "cap_threads", "thread_env"]

#: Variables read when a library loads; OpenMP's is also read by each new thread's ICVs.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def _check_threads(n_threads: int) -> int:
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"thread cap must be a positive integer; got {n_threads!r}")
    return n_threads


def thread_env(n_threads: int) -> dict[str, str]:
    """Environment variables that cap a process about to start to ``n_threads`` threads.

    Also sets ``PYTHON_CPU_COUNT`` so that ``os.cpu_count()`` (Python 3.13+) agrees.
    """
    value = str(_check_threads(n_threads))
    return {**dict.fromkeys(THREAD_ENV_VARS, value), "PYTHON_CPU_COUNT": value}


class _Cap:
    """One kind of thread pool that can be capped at run time."""

    name: ClassVar[str]

    def available(self) -> bool:
        raise NotImplementedError

    def apply(self, n_threads: int) -> None:
        raise NotImplementedError


class _ThreadpoolctlCap(_Cap):
    """BLAS (OpenBLAS, MKL, BLIS, FlexiBLAS) and OpenMP runtimes, through threadpoolctl."""

    name = "threadpoolctl"

    def available(self) -> bool:
        return True

    def apply(self, n_threads: int) -> None:
        from threadpoolctl import threadpool_limits

        # Applies now, for good; OpenMP's limit is per calling thread (see docs).
        threadpool_limits(limits=n_threads)


class _TbbCap(_Cap):
    """TBB through tbb4py's ``global_control`` (threadpoolctl does not cover TBB)."""

    name = "tbb"
    _control = None

    def available(self) -> bool:
        return "tbb" in sys.modules or importlib.util.find_spec("tbb") is not None

    def apply(self, n_threads: int) -> None:
        import tbb

        # The control object caps TBB only while it is alive: keep it for the process.
        type(self)._control = tbb.global_control(
            tbb.global_control.max_allowed_parallelism, n_threads
        )


class _NumbaCap(_Cap):
    """numba's own thread pool, when numba is already imported."""

    name = "numba"

    def available(self) -> bool:
        return "numba" in sys.modules

    def apply(self, n_threads: int) -> None:
        import numba

        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))


class _NumexprCap(_Cap):
    """numexpr's thread pool, when numexpr is already imported."""

    name = "numexpr"

    def available(self) -> bool:
        return "numexpr" in sys.modules

    def apply(self, n_threads: int) -> None:
        import numexpr

        numexpr.set_num_threads(n_threads)


CAPS: list[_Cap] = [_ThreadpoolctlCap(), _TbbCap(), _NumbaCap(), _NumexprCap()]


def cap_threads(n_threads: int) -> list[str]:
    """Cap every thread pool loaded in this process to ``n_threads``; return which kinds."""
    _check_threads(n_threads)
    applied = []
    for cap in CAPS:
        if cap.available():
            cap.apply(n_threads)
            applied.append(cap.name)
    return applied
