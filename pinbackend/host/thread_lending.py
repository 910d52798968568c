"""Lend a pinned thread pool's idle shares to its one running task's process-wide BLAS pool.

A pinned thread pool with fewer running tasks than threads (a call's tail, one task on a
pool of two) leaves the idle threads' shares idle behind the running task's cap. Here, once
exactly one of the pool's threads has run a task for :data:`~.lending.LEND_AFTER_SECONDS`,
and no other task of the pool started or ended for as long, a small watch thread widens
that task's OpenBLAS (pthreads) pool onto the idle shares: it pins the process's native
helper threads (threads that are not Python's) to the pool's cores, then raises the
process-wide limit to as many threads (the raising thread holds the wide mask for that
moment: OpenBLAS started with 1 thread creates its helpers as the limit rises, with the
raising thread's mask). The task's own thread keeps its share, as does every Python thread.

It is taken back, limit first (no BLAS call starts wider), then helpers pinned to the
borrower's share (a running call ends there, never on a lent share):

- in :meth:`ThreadLoans.task_starts`, synchronously in the thread of any task of the pool
  that starts, before its function runs: a helper that runs for the borrower never runs on
  a share while that share's thread runs a task;
- when the borrowing task ends, and before the process-wide cap changes (another pinned
  thread pool starts, one ends, an import loads a library: :mod:`.blas_cap` recalls first).

Why only OpenBLAS-pthreads: its limit is the process's, so another thread can raise it for
the running task and lower it again mid-task. OpenMP's limit is the task thread's own and
MKL's (as threadpoolctl sets it) too: raised at the task's start, neither could be lowered
from outside when the share's thread gets a task (docs/how-it-works.md, "Widening a running
slot"). Everything here runs under the process-wide cap's lock (``ProcessWideCap.lock``),
which also orders it against every change of the cap; no state is read or written outside
it, so it holds without the GIL too.

Lending is only safe while the pool is the process's only pinned thread pool (OpenBLAS's
pool and helpers are shared by all threads of the process: :meth:`.ProcessWideCap.may_lend`)
and the shares are disjoint with one thread each; never where the user said
``fixed_slots=True`` or set a thread cap. The threads moved are restored to their masks
(threads first seen during a loan: to the pool creator's mask) when the pool ends.
"""

from __future__ import annotations

import contextlib
import threading
import time

from .. import _platform
from .blas_cap import ProcessWideCap
from .foreign_load import ForeignLoad
from .lending import BORROW_POLL_SECONDS, LEND_AFTER_SECONDS, native_threads

__all__ = ["ThreadLoans", "may_lend_shares"]


def may_lend_shares(shares: tuple[frozenset[int], ...]) -> bool:
    """Whether a pool with these shares (one thread each) could lend: two or more disjoint
    shares (threads that share cores have nothing idle to lend), on Linux (helpers are
    found in ``/proc`` and pinned by thread id)."""
    cores = frozenset().union(*shares)
    disjoint = len(shares) >= 2 and len(cores) == sum(map(len, shares))
    return disjoint and _platform.IS_LINUX and _platform.CAN_SET_AFFINITY


class ThreadLoans:
    """One pinned thread pool's lending (see the module docstring): made with the pool,
    after it entered the cap; closed (:meth:`close`) before it leaves the cap."""

    def __init__(self, shares: tuple[frozenset[int], ...], cap: ProcessWideCap) -> None:
        self.shares = shares
        self._cap = cap
        self._running: dict[int, frozenset[int]] = {}  # pool thread ident -> its share
        self._quiet_since = time.monotonic()  # the pool's last task start or end
        self._loan: frozenset[int] | None = None  # the borrower's share, while lent
        self._moved: dict[int, frozenset[int]] = {}  # native tid -> its mask before lending
        self._home = _platform.get_thread_affinity(threading.get_native_id())
        self._closed = self._failed = False
        self._load = ForeignLoad()  # other programs on the pool's CPUs
        self._stop = threading.Event()
        with cap.lock:
            cap.add_lender(self)
        threading.Thread(target=self._watch, name="pinbackend-thread-lending", daemon=True).start()

    @property
    def lent(self) -> bool:
        """Whether the running task's BLAS pool is widened now."""
        with self._cap.lock:
            return self._loan is not None

    def task_starts(self, share: frozenset[int]) -> None:
        """A pool thread on ``share`` starts a task: take any loan back first."""
        with self._cap.lock:
            self._running[threading.get_ident()] = share
            self._quiet_since = time.monotonic()
            self._recall_or_stop()

    def task_ends(self) -> None:
        """A pool thread's task ended (the borrower's: its loan is taken back)."""
        with self._cap.lock:
            self._running.pop(threading.get_ident(), None)
            self._quiet_since = time.monotonic()
            self._recall_or_stop()

    def _recall_or_stop(self) -> None:
        try:
            self.recall_locked()
        except Exception:
            # The limit was lowered first; pinning a helper back failed (a CPU went
            # offline?). The task is not failed for it; this pool lends no more.
            self._failed = True

    def close(self) -> None:
        """The pool ends: take the loan back, put the moved threads back, stop watching."""
        self._stop.set()
        with self._cap.lock:
            if self._closed:
                return
            self._closed = True
            self._cap.remove_lender(self)
            try:
                self.recall_locked()
            finally:
                moved, self._moved = self._moved, {}
                for tid, mask in moved.items():
                    with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                        _platform.set_thread_affinity(tid, mask)

    def recall_locked(self) -> None:
        """Narrow a loan (under the cap's lock): the limit back to the cap first, then every
        helper that could run on a lent share onto the borrower's share."""
        share, self._loan = self._loan, None
        if share is None:
            return
        self._cap.resize()
        for tid, mask in self._helpers().items():
            self._moved.setdefault(tid, self._home if mask == self._all else mask)
            with contextlib.suppress(ProcessLookupError):
                _platform.set_thread_affinity(tid, share)

    def look(self) -> None:
        """Widen onto the idle shares if one task alone has run long enough (the watch)."""
        with self._cap.lock:
            if self._closed or self._failed:
                return
            if self._loan is not None:
                if self._load.busy(self._all, self._all - self._loan) is not False:
                    self._recall_or_stop()  # another program works there: no gain
                return
            if not self._cap.may_lend() or len(self._running) != 1:
                self._load.forget()
                return
            lent = self._all - next(iter(self._running.values()))
            if self._load.busy(self._all, lent) is not False:  # busy, or not known yet
                return
            if time.monotonic() - self._quiet_since < LEND_AFTER_SECONDS:
                return
            (share,) = self._running.values()
            helpers = self._helpers()
            others = [s for s in self.shares if s != share]
            unknown = [mask for tid, mask in helpers.items() if tid not in self._moved]
            if any(mask <= s for mask in unknown for s in others):
                # A native thread pinned inside an idle thread's share: that thread's OpenMP
                # team, or a BLAS helper created there; which one is not known, and moving
                # either would be wrong. Lend nothing.
                return
            self._widen(share, helpers)

    @property
    def _all(self) -> frozenset[int]:
        return frozenset().union(*self.shares)

    def _widen(self, share: frozenset[int], helpers: dict[int, frozenset[int]]) -> None:
        cores = self._all
        self._loan = share  # from here a failure narrows again
        for tid, mask in helpers.items():
            self._moved.setdefault(tid, mask)
            with contextlib.suppress(ProcessLookupError):
                _platform.set_thread_affinity(tid, cores)
        me = threading.get_native_id()
        mine = _platform.get_thread_affinity(me)
        _platform.set_thread_affinity(me, cores)
        try:
            self._cap.resize(len(cores))
        finally:
            _platform.set_thread_affinity(me, mine)

    def _helpers(self) -> dict[int, frozenset[int]]:
        """This process's threads that are not Python's, with their masks: the BLAS pools'
        helpers, OpenMP teams, other libraries' native threads (which cannot be told apart)."""
        found = {}
        for tid in native_threads():
            try:
                found[tid] = _platform.get_thread_affinity(tid)
            except (ProcessLookupError, FileNotFoundError):
                continue
        return found

    def _watch(self) -> None:
        while not self._stop.wait(BORROW_POLL_SECONDS):
            try:
                self.look()
            except Exception:
                with self._cap.lock:  # a CPU went offline? Stop lending for this pool
                    self._recall_or_stop()
                    self._failed = True
                return
