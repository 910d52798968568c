"""Cap process-wide BLAS pools while pinned thread pools live, and restore them after.

A BLAS library built with pthreads (OpenBLAS) has one pool for the whole process: a thread
cannot cap it for itself alone. While pinned thread pools live, it is capped to the
smallest share any of them has, and given back its size when the last one ends. While one
pool alone lives, it may lend its idle threads' shares to its one running task
(:mod:`.thread_lending`): under this cap's lock, which every change of the cap takes back
first.
"""

from __future__ import annotations

from threadpoolctl import ThreadpoolController

from . import loads
from .caps import _THREADPOOLCTL_LOCK, unpinned_default
from .locks import PinLock
from .state import STATE

__all__ = ["ProcessWideCap", "blas_cap", "force_threads", "process_wide_blas"]


def process_wide_blas(controller: ThreadpoolController | None = None) -> list:
    """threadpoolctl controllers of BLAS libraries whose pool is shared by every thread
    (call under ``_THREADPOOLCTL_LOCK``)."""
    controller = ThreadpoolController() if controller is None else controller
    return [
        lib
        for lib in controller.select(user_api="blas").lib_controllers
        if getattr(lib, "threading_layer", None) == "pthreads"
    ]


def force_threads(lib, n_threads: int) -> None:
    """Set a process-wide BLAS pool's size from whichever thread (under the threadpoolctl
    lock): threadpoolctl lets only the first thread that set OpenBLAS's pool set it again."""
    type(lib).clear_controlling_thread(force=True)
    lib.set_num_threads(n_threads)
    type(lib).clear_controlling_thread(force=True)


def _key(lib) -> tuple[str, type]:
    return (lib.filepath, type(lib))


class ProcessWideCap:
    """Caps process-wide BLAS pools while pinned thread pools live; restores them after.

    One per process, ``STATE.blas_cap`` (:func:`blas_cap`); a pool leaves the one it entered.

    Counted: nested or concurrent pools keep the smallest cap until the last one ends. A
    library that a task loads meanwhile sizes itself by the loading thread's share: BLAS
    pools loaded so are capped too, and set to the unpinned default
    (:func:`~pinbackend.host.caps.unpinned_default`) when the last pool ends, as are the
    OpenMP runtimes loaded so, in the thread that ends it (OpenMP limits are per thread).
    """

    def __init__(self) -> None:
        self._lock = PinLock("process-wide BLAS cap")
        self._active: list[int] = []
        self._before: set[tuple[str, type]] = set()  # every library loaded before the pools
        self._saved: dict[tuple[str, type], tuple[object, int]] = {}  # BLAS -> size after
        #: Pools that may lend (host.thread_lending.ThreadLoans): recalled before any change.
        self._lenders: list = []
        self._entering = 0

    @property
    def active(self) -> bool:
        """Whether pinned thread pools live in this process."""
        return bool(self._active)

    @property
    def lock(self) -> PinLock:
        """This cap's lock; lending (:mod:`.thread_lending`) widens and narrows under it."""
        return self._lock

    @property
    def entering(self) -> bool:
        """Whether a pinned thread pool is starting now (a pool worker borrows nothing)."""
        return self._entering > 0

    def enter(self, n_threads: int) -> None:
        """A pinned thread pool starts: cap to the smallest share of the live pools (a loan
        is taken back first: a second pool means nothing may be lent; so is a pool
        worker's, :mod:`.lending`, whose widened size would otherwise be saved as the size
        to restore)."""
        loads.watch_extension_loads()
        loads.add_listener(self.after_load)
        with self._lock:
            self._entering += 1
        try:
            # Before this cap's lock: the keeper's lock comes first (docs, "Lock order").
            recall = getattr(STATE.keeper, "recall_loans", None)
            if recall is not None:
                recall()
            with self._lock:
                self._recall_loans()
                if not self._active:
                    with _THREADPOOLCTL_LOCK:
                        controllers = ThreadpoolController().lib_controllers
                        self._before = {_key(lib) for lib in controllers}
                self._active.append(n_threads)
                self._set(min(self._active))
        finally:
            with self._lock:
                self._entering -= 1

    def leave(self, n_threads: int, *, restore_openmp_here: bool = True) -> None:
        """One pool ends; the last one restores the caps (and, with ``restore_openmp_here``,
        the OpenMP runtimes loaded meanwhile, in the calling thread: not a pinned one)."""
        with self._lock:
            self._recall_loans()
            self._active.remove(n_threads)
            if self._active:
                self._set(min(self._active))
                return
            with _THREADPOOLCTL_LOCK:
                for lib, size in self._saved.values():
                    force_threads(lib, size)
                if restore_openmp_here:
                    openmp = ThreadpoolController().select(user_api="openmp").lib_controllers
                    for lib in openmp:
                        if _key(lib) not in self._before:
                            lib.set_num_threads(unpinned_default("openmp"))
            self._saved = {}

    def after_load(self) -> None:
        """An import loaded libraries: while pools live, cap new process-wide BLAS too."""
        with self._lock:
            if self._active:
                self._recall_loans()
                self._set(min(self._active))

    # -- for lending (host.thread_lending), each under ``lock`` --------------------------

    def add_lender(self, lender) -> None:
        """Register a pool that may lend: ``lender.recall_locked()`` is called, under the
        lock, before every change of the cap."""
        self._lenders.append(lender)

    def remove_lender(self, lender) -> None:
        """The pool ended (its loan taken back)."""
        self._lenders.remove(lender)

    def may_lend(self) -> bool:
        """Whether exactly one pinned thread pool lives (a lender's own) and a process-wide
        BLAS pool is capped: nothing else shares the pool's cores or its BLAS pools."""
        return len(self._active) == 1 and bool(self._saved)

    def resize(self, n_threads: int | None = None) -> None:
        """Every capped process-wide BLAS pool to ``n_threads`` (None: back to the cap)."""
        with _THREADPOOLCTL_LOCK:
            for lib, _ in self._saved.values():
                force_threads(lib, min(self._active) if n_threads is None else n_threads)

    def _recall_loans(self) -> None:
        for lender in list(self._lenders):
            lender.recall_locked()

    def _set(self, n_threads: int) -> None:
        with _THREADPOOLCTL_LOCK:
            for lib in process_wide_blas():
                if _key(lib) not in self._saved:
                    loaded_before = _key(lib) in self._before
                    after = lib.num_threads if loaded_before else unpinned_default("blas")
                    self._saved[_key(lib)] = (lib, after)
                force_threads(lib, n_threads)


def blas_cap() -> ProcessWideCap:
    """This process's cap on process-wide BLAS pools (``STATE.blas_cap``, made on first use)."""
    cap = STATE.blas_cap
    if cap is None:
        with STATE.lock:
            if STATE.blas_cap is None:
                STATE.blas_cap = ProcessWideCap()
            cap = STATE.blas_cap
    return cap
