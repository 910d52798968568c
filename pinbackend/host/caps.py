"""Cap the thread pools of native libraries (BLAS, OpenMP, TBB, numba, numexpr).

Two moments matter. Before a process starts, its environment sets the pools' sizes at load
time (:func:`thread_env` returns those variables as a dict; it never touches ``os.environ``).
After it started, libraries already loaded are capped at run time (:func:`cap_threads`), one
small adapter per library kind, as threadpoolctl does for its controllers.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import ClassVar

__all__ = [
    "THREAD_ENV_VARS",
    "CapController",
    "cap_openmp_in_this_thread",
    "cap_threads",
    "register",
    "report_caps",
    "thread_env",
]

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


# threadpoolctl is not thread-safe (threadpoolctl#205): every call goes through this lock.
_THREADPOOLCTL_LOCK = threading.RLock()


class CapController:
    """One kind of thread pool that can be capped at run time and report its size.

    Subclasses set ``name`` and implement :meth:`available`, :meth:`apply` and
    :meth:`report`; :func:`register` adds one to the registry every cap goes through.
    """

    name: ClassVar[str]

    def available(self) -> bool:
        """Whether this kind of pool is loaded (or loadable) in this process."""
        raise NotImplementedError

    def apply(self, n_threads: int) -> None:
        """Cap the pool to ``n_threads`` for this process, from now on."""
        raise NotImplementedError

    def report(self) -> dict[str, int]:
        """The pool sizes in force now, by pool kind (empty when not loaded)."""
        raise NotImplementedError


def _ready(module: str, attribute: str) -> bool:
    """Whether ``module`` is imported far enough to have ``attribute`` (a cap may run while
    the module itself is still importing its extension)."""
    return hasattr(sys.modules.get(module), attribute)


class _ThreadpoolctlCap(CapController):
    """BLAS (OpenBLAS, MKL, BLIS, FlexiBLAS) and OpenMP runtimes, through threadpoolctl."""

    name = "threadpoolctl"

    def available(self) -> bool:
        return True

    def apply(self, n_threads: int) -> None:
        from threadpoolctl import threadpool_limits

        # Applies now, for good; OpenMP's limit is per calling thread (see docs).
        with _THREADPOOLCTL_LOCK:
            threadpool_limits(limits=n_threads)

    def report(self) -> dict[str, int]:
        from threadpoolctl import threadpool_info

        with _THREADPOOLCTL_LOCK:
            pools = threadpool_info()
        sizes: dict[str, int] = {}
        for pool in pools:
            api = pool["user_api"]
            sizes[api] = max(sizes.get(api, 0), pool["num_threads"])
        return sizes


class _TbbCap(CapController):
    """TBB through tbb4py's ``global_control`` (threadpoolctl does not cover TBB)."""

    name = "tbb"
    _control = None

    def available(self) -> bool:
        if "tbb" in sys.modules:
            return _ready("tbb", "global_control")
        return importlib.util.find_spec("tbb") is not None

    def apply(self, n_threads: int) -> None:
        import tbb

        # The control object caps TBB only while it is alive: keep it for the process.
        type(self)._control = tbb.global_control(
            tbb.global_control.max_allowed_parallelism, n_threads
        )

    def report(self) -> dict[str, int]:
        if not _ready("tbb", "global_control"):
            return {}
        import tbb

        return {"tbb": tbb.global_control.active_value(tbb.global_control.max_allowed_parallelism)}


class _NumbaCap(CapController):
    """numba's own thread pool, when numba is already imported."""

    name = "numba"

    def available(self) -> bool:
        return _ready("numba", "set_num_threads")

    def apply(self, n_threads: int) -> None:
        import numba

        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))

    def report(self) -> dict[str, int]:
        if not _ready("numba", "get_num_threads"):
            return {}
        import numba

        return {"numba": numba.get_num_threads()}


class _NumexprCap(CapController):
    """numexpr's thread pool, when numexpr is already imported."""

    name = "numexpr"

    def available(self) -> bool:
        return _ready("numexpr", "set_num_threads")

    def apply(self, n_threads: int) -> None:
        import numexpr

        numexpr.set_num_threads(n_threads)

    def report(self) -> dict[str, int]:
        if not self.available():
            return {}
        import numexpr

        # set_num_threads returns the previous value: set it back at once to read it.
        current = numexpr.set_num_threads(1)
        numexpr.set_num_threads(current)
        return {"numexpr": current}


CAPS: list[CapController] = [_ThreadpoolctlCap(), _TbbCap(), _NumbaCap(), _NumexprCap()]


def register(controller: CapController) -> None:
    """Add a cap controller: every slot applied from now on caps its pool too."""
    if not isinstance(controller, CapController):
        raise TypeError(
            f"register() needs a CapController instance; got {type(controller).__name__}"
        )
    if all(type(existing) is not type(controller) for existing in CAPS):
        CAPS.append(controller)


def cap_threads(n_threads: int) -> list[str]:
    """Cap every thread pool loaded in this process to ``n_threads``; return which kinds."""
    _check_threads(n_threads)
    applied = []
    for cap in CAPS:
        if cap.available():
            cap.apply(n_threads)
            applied.append(cap.name)
    return applied


def cap_openmp_in_this_thread(n_threads: int) -> None:
    """Cap the OpenMP teams the calling thread starts (OpenMP limits are per thread)."""
    from threadpoolctl import threadpool_limits

    _check_threads(n_threads)
    with _THREADPOOLCTL_LOCK:
        threadpool_limits(limits=n_threads, user_api="openmp")


def report_caps() -> dict[str, int]:
    """The size of every capped pool kind loaded in this process (``{"blas": 2, ...}``)."""
    sizes: dict[str, int] = {}
    for cap in CAPS:
        if cap.available():
            sizes.update(cap.report())
    return sizes
