"""pinbackend's own locks: taken in one documented order, safe against finalizers and fork.

Two hazards that plain ``threading.Lock`` objects leave open:

- **Finalizers.** The garbage collector runs ``weakref.finalize`` callbacks in whichever
  thread happens to allocate, possibly one that holds one of our locks right now. A callback
  that takes the same lock (releasing a collected pool's cores and caps) would wait for
  itself forever. :func:`call_when_unlocked` runs such work at once where the thread holds
  none of our locks, and otherwise when it lets go of its last one.
- **Fork.** A child forked while another thread held a lock inherits it held, by a thread
  that does not exist in the child. Every :class:`PinLock` is made anew in forked children
  (:func:`remake_in_forked_child`, called first by the process's one at-fork hook in
  :mod:`pinbackend.host.state`).

The order (see docs/how-it-works.md, "Lock order") is the order of :data:`ORDER`: a thread
holding one lock takes only locks later in it, and never calls into Python under a lock
that is not ours (the dynamic loader's).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

__all__ = ["ORDER", "PinLock", "call_when_unlocked", "holds_any", "remake_in_forked_child"]

#: Lock names, outermost first. A thread may take a lock only if it holds none later in
#: this list.
ORDER = (
    "process-wide BLAS cap",  # host.threads: pinned thread pools' cap on shared BLAS pools
    "threadpoolctl",  # host.caps: threadpoolctl is not thread-safe (threadpoolctl#205)
    "lease table",  # host.leases: the leases this process holds
    "extension-load watch",  # host.loads: the load counter and its listeners
    "process state",  # host.state: STATE's small tables (live pools, watched owner, ...)
)

_THREAD = threading.local()
_ALL: weakref.WeakSet[PinLock] = weakref.WeakSet()


class PinLock:
    """A named lock of pinbackend's (see the module docstring); a context manager."""

    def __init__(self, name: str, *, reentrant: bool = False) -> None:
        if name not in ORDER:
            raise ValueError(f"lock {name!r} has no place in the lock order {ORDER}")
        self.name = name
        self.reentrant = reentrant
        self._lock = threading.RLock() if reentrant else threading.Lock()
        _ALL.add(self)

    def __enter__(self) -> PinLock:
        # Counted before taking it: a finalizer that runs while we wait, or just after, sees
        # this thread as holding a lock and defers its work.
        _THREAD.depth = getattr(_THREAD, "depth", 0) + 1
        try:
            self._lock.acquire()
        except BaseException:
            _leave()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()
        _leave()

    def _reinit(self) -> None:
        self._lock = threading.RLock() if self.reentrant else threading.Lock()

    def __repr__(self) -> str:
        return f"PinLock({self.name!r})"


def holds_any() -> bool:
    """Whether the calling thread holds (or is taking) one of pinbackend's locks."""
    return getattr(_THREAD, "depth", 0) > 0


def call_when_unlocked(work: Callable[[], None]) -> None:
    """Run ``work()`` now, or, if this thread holds one of our locks, once it holds none.

    For finalizers and other callbacks that may run in any thread at any moment.
    """
    if not holds_any():
        work()
        return
    pending = getattr(_THREAD, "pending", None)
    if pending is None:
        pending = _THREAD.pending = []
    pending.append(work)


def _leave() -> None:
    _THREAD.depth -= 1
    if _THREAD.depth == 0:
        pending = getattr(_THREAD, "pending", None)
        while pending:
            pending.pop(0)()


def remake_in_forked_child() -> None:
    """Make every lock anew (in a forked child, before anything takes one)."""
    # The forking thread holds none of them (nothing forks under our locks); other threads
    # are gone, and so is whatever they held.
    for lock in list(_ALL):
        lock._reinit()
