"""Cap the thread pools of native libraries (BLAS, OpenMP, TBB, numba, numexpr).

Two moments matter. Before a process starts, its environment sets the pools' sizes at load
time (:func:`thread_env` returns those variables as a dict; it never touches ``os.environ``).
After it started, libraries already loaded are capped at run time (:func:`cap_threads`), one
small adapter per library kind, as threadpoolctl does for its controllers. As threadpoolctl's
``threadpool_limits`` does, :func:`apply_caps` remembers the sizes it changed and puts them
back (:meth:`AppliedCaps.restore`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from .. import _platform
from . import loads
from .locks import PinLock
from .state import STATE

__all__ = [
    "THREAD_ENV_VARS",
    "AppliedCaps",
    "CapController",
    "apply_caps",
    "cap_openmp_in_this_thread",
    "cap_threads",
    "register",
    "report_caps",
    "thread_env",
    "unpinned_default",
    "user_thread_limits",
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


def thread_env(n_threads: int, lower: Mapping[str, int] | None = None) -> dict[str, str]:
    """Environment variables that cap a process about to start to ``n_threads`` threads.

    ``lower`` holds smaller values the user chose for some variables
    (:func:`user_thread_limits`): they are kept, never raised. Also sets
    ``PYTHON_CPU_COUNT`` so that ``os.cpu_count()`` (Python 3.13+) agrees.
    """
    _check_threads(n_threads)
    lower = lower or {}
    env = {var: str(min(n_threads, lower.get(var, n_threads))) for var in THREAD_ENV_VARS}
    return {**env, "PYTHON_CPU_COUNT": str(n_threads)}


def user_thread_limits(environ: Mapping[str, str]) -> dict[str, int]:
    """The thread-count variables set to a positive integer in ``environ`` (the user's
    choices, which pinbackend honours up to a slot's size, as joblib documents for loky)."""
    limits = {}
    for var in THREAD_ENV_VARS:
        value = environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            limits[var] = int(value)
    return limits


#: Which thread-count variables size which pool kinds (threadpoolctl's user APIs and the
#: other controllers' names), to honour a user's smaller value per kind.
_KIND_VARS = {
    "blas": ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"),
    "openmp": ("OMP_NUM_THREADS",),
    "numexpr": ("NUMEXPR_NUM_THREADS",),
    "numba": ("NUMBA_NUM_THREADS",),
}


def _limit_for(kind: str, n_threads: int, lower: Mapping[str, int]) -> int:
    return min([n_threads, *(lower[var] for var in _KIND_VARS.get(kind, ()) if var in lower)])


def unpinned_default(kind: str) -> int:
    """The size a ``kind`` pool ("blas", "openmp") gets when it loads outside pinned threads:
    the user's variable, else the CPUs the process's main thread may use, and never above
    the process's own cap (the runner's ``--threads``).

    A library loaded inside a pinned thread sizes itself by that thread's share instead;
    once the pinned pools end, it is set back to this.
    """
    limit = _limit_for(kind, len(_platform.main_thread_cpus()), user_thread_limits(os.environ))
    return limit if STATE.main_cap is None else min(limit, STATE.main_cap)


# threadpoolctl is not thread-safe (threadpoolctl#205): every call goes through this lock.
_THREADPOOLCTL_LOCK = PinLock("threadpoolctl", reentrant=True)


#: What puts one pool back to the size it had before a cap (see :meth:`CapController.apply`).
Restore = Callable[[], None]


class CapController:
    """One kind of thread pool that can be capped at run time and report its size.

    Subclasses set ``name`` and implement :meth:`available`, :meth:`apply` and
    :meth:`report`; :func:`register` adds one to the registry every cap goes through.
    """

    name: ClassVar[str]

    def available(self) -> bool:
        """Whether this kind of pool is loaded (or loadable) in this process."""
        raise NotImplementedError

    def apply(self, n_threads: int, lower: Mapping[str, int] | None = None) -> Restore | None:
        """Cap the pool to ``n_threads`` for this process, from now on; ``lower`` holds the
        user's smaller thread-count variables (:func:`user_thread_limits`) to honour.

        Return a callable that puts the pool back to the size it had before, for
        :meth:`AppliedCaps.restore` (an undone slot); None where the controller cannot, and
        its cap then stays for the life of the process.
        """
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

    def __init__(self) -> None:
        #: The libraries found last, with the extension-load count they were found at.
        self._found: tuple[int, object] | None = None

    def available(self) -> bool:
        return True

    def _controller(self, make: Callable[[], object]):
        """threadpoolctl's controller of the libraries loaded now, from ``make`` (its class,
        imported before taking the lock); call under the lock.

        Finding them reads ``/proc/self/maps``: 2-3 ms with scikit-learn loaded, paid by an
        idle pool worker each time it applies its slot again. Where extension-module loads
        are counted (:mod:`pinbackend.host.loads`), the libraries found are reused until a
        module loads; one loaded by ``ctypes`` or by native code on its own is not seen then
        (it sized itself by the slot's variables as it loaded).
        """
        count = loads.generation() if loads.watching() else None
        if count is None or self._found is None or self._found[0] != count:
            self._found = (count, make())
        return self._found[1]

    def apply(self, n_threads: int, lower: Mapping[str, int] | None = None) -> Restore:
        from threadpoolctl import ThreadpoolController

        limits: int | dict = n_threads
        if lower:
            limits = {kind: _limit_for(kind, n_threads, lower) for kind in ("blas", "openmp")}
        # Applies now, until restored; OpenMP's limit is per calling thread (see docs): it is
        # set, and restored, in the thread that calls.
        with _THREADPOOLCTL_LOCK:
            limiter = self._controller(ThreadpoolController).limit(limits=limits)

        def restore() -> None:
            with _THREADPOOLCTL_LOCK:
                limiter.restore_original_limits()

        return restore

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
    #: tbb4py is installed but cannot load (its libtbb is missing): nothing of TBB runs here.
    _unloadable = False

    def available(self) -> bool:
        if "tbb" in sys.modules:
            return _ready("tbb", "global_control")
        if type(self)._unloadable or importlib.util.find_spec("tbb") is None:
            return False
        try:  # what apply() would import anyway, once
            import tbb  # noqa: F401
        except ImportError:  # not ModuleNotFoundError only: "libtbb.so.12: cannot open"
            type(self)._unloadable = True
            return False
        return True

    def apply(self, n_threads: int, lower: Mapping[str, int] | None = None) -> Restore:
        import tbb

        # The control object caps TBB only while it is alive: keep it until restored, when
        # the one it replaced (if any) is in force again.
        cls, before = type(self), type(self)._control
        ours = tbb.global_control(tbb.global_control.max_allowed_parallelism, n_threads)
        cls._control = ours

        def restore() -> None:
            if cls._control is ours:
                cls._control = before

        return restore

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

    def apply(self, n_threads: int, lower: Mapping[str, int] | None = None) -> Restore:
        import numba

        n_threads = _limit_for("numba", n_threads, lower or {})
        before = numba.get_num_threads()  # per calling thread, as the cap itself
        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
        return lambda: numba.set_num_threads(before)

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

    def apply(self, n_threads: int, lower: Mapping[str, int] | None = None) -> Restore:
        import numexpr

        before = numexpr.set_num_threads(_limit_for("numexpr", n_threads, lower or {}))
        return lambda: numexpr.set_num_threads(before)

    def report(self) -> dict[str, int]:
        if not self.available():
            return {}
        import numexpr

        # set_num_threads returns the previous value: set it back at once to read it, under
        # the lock, or two threads reading together leave numexpr at 1 thread.
        with _THREADPOOLCTL_LOCK:
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
    # A check, then an append: without the GIL, threads registering the same kind together
    # each found it missing (2 of 8 on 3.13t). Appending replaces nothing that a cap in
    # another thread iterates (apply_caps and report_caps read a copy).
    with _THREADPOOLCTL_LOCK:
        if all(type(existing) is not type(controller) for existing in CAPS):
            CAPS.append(controller)


@dataclass
class AppliedCaps:
    """The pools :func:`apply_caps` capped (``kinds``, controller names) and how to put each
    back as it was before."""

    kinds: list[str] = field(default_factory=list)
    restores: list[Restore] = field(default_factory=list)

    def restore(self) -> None:
        """Put every pool back to its size before the caps, last capped first (idempotent;
        a pool whose controller returned no restore keeps its cap)."""
        while self.restores:
            self.restores.pop()()


def apply_caps(n_threads: int, lower: Mapping[str, int] | None = None) -> AppliedCaps:
    """Cap every thread pool loaded in this process to ``n_threads`` (or the user's smaller
    value of its variable, in ``lower``); return which kinds, and how to restore them.

    Where a controller fails, the pools capped before it are restored and the error raised.
    """
    _check_threads(n_threads)
    applied = AppliedCaps()
    try:
        for cap in list(CAPS):
            if cap.available():
                # Controllers registered by users may take the count alone.
                restore = cap.apply(n_threads, lower) if lower else cap.apply(n_threads)
                applied.kinds.append(cap.name)
                if restore is not None:
                    applied.restores.append(restore)
    except BaseException:
        applied.restore()
        raise
    return applied


def cap_threads(n_threads: int, lower: Mapping[str, int] | None = None) -> list[str]:
    """Cap every thread pool loaded in this process like :func:`apply_caps`, for good (a
    process's own cap, a task thread's); return which kinds."""
    return apply_caps(n_threads, lower).kinds


def cap_openmp_in_this_thread(n_threads: int) -> None:
    """Cap the OpenMP teams the calling thread starts (OpenMP limits are per thread)."""
    from threadpoolctl import threadpool_limits

    _check_threads(n_threads)
    with _THREADPOOLCTL_LOCK:
        threadpool_limits(limits=n_threads, user_api="openmp")


def report_caps() -> dict[str, int]:
    """The size of every capped pool kind loaded in this process (``{"blas": 2, ...}``)."""
    sizes: dict[str, int] = {}
    for cap in list(CAPS):
        if cap.available():
            sizes.update(cap.report())
    return sizes
