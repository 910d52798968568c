"""Lend idle slots' cores to a pool worker whose task runs, and take them back on demand.

A pool with fewer running tasks than workers (a call's tail, ``cv=3`` on 2 workers, the last
fits of a search) leaves the idle workers' cores idle behind the running tasks' caps. Here
an idle worker gives its lease back after :data:`LEND_AFTER_SECONDS` (instead of
:data:`~.lifecycle.IDLE_RELEASE_SECONDS`), and a worker whose task has run that long, and
kept at least half a CPU busy since its last look, *borrows* the free slots of its pool: it
leases them (``loan=True`` in the record), pins its BLAS pools' helper threads (the
process's threads that are not Python's) to its slot plus the loans and raises its
process-wide BLAS pools (OpenBLAS built with pthreads) to as many threads. The task's own
thread, and every Python thread, keeps the slot's CPUs, as do ``os.cpu_count()`` and the
thread variables: nothing sizes itself on a loan that may be recalled mid-task. It gives
the loans back when the task ends, and as soon as a claim *wants* one of them
(:mod:`.wants`: the idle worker's next task, a new worker of the pool, another job): it
lowers the BLAS pools first, then pins the helpers back, then releases the leases. A loaned
core is leased by exactly one process at a time, as every core is.

What widens: only what a thread other than the task's own can change while the task runs
(docs/how-it-works.md, "Widening a running slot"). OpenBLAS-pthreads' limit is the
process's: raised from the keeper's thread, the task's next BLAS call uses it. OpenMP's
limit is per thread (the task thread's could be raised only at the task's start, and never
lowered again mid-task if the loan is recalled), and MKL's as threadpoolctl sets it is the
calling thread's: neither is widened. A worker lends nothing where lending could break a
promise: a pool that shares cores, a cap the user asked for (``inner_max_num_threads``, a
thread variable), pinned thread pools inside the task (their threads are pinned narrower);
nor where the user said ``fixed_slots=True``.
"""

from __future__ import annotations

import contextlib
import threading
import time

from threadpoolctl import ThreadpoolController

from .. import _platform
from . import loads
from .blas_cap import force_threads, process_wide_blas
from .caps import _THREADPOOLCTL_LOCK
from .foreign import pinned_cpus
from .foreign_load import ForeignLoad
from .holders import list_leases
from .leases import Lease, LeaseConflict, claim
from .pool import PoolPlan
from .slot import AppliedSlot
from .state import STATE
from .wants import Wants

__all__ = ["LEND_AFTER_SECONDS", "RECALL_POLL_SECONDS", "Loans", "native_threads"]

#: An idle worker of a lending pool gives its lease back after this long without a task, and
#: a task borrows once it has run this long (shorter tasks never borrow).
LEND_AFTER_SECONDS = 0.1
#: How often a worker holding loans looks for wants (one ``stat`` each).
RECALL_POLL_SECONDS = 0.02
#: How often a running task looks for free slots to borrow (a lock probe per free CPU).
BORROW_POLL_SECONDS = 0.1


class Loans:
    """The slots this worker borrowed for its running task (see the module docstring).

    Called by the worker's keeper, under its lock, from its watch thread or the task's.
    Lends where the plan says so (``PoolPlan.lend``: not told ``fixed_slots``, not shared,
    no cap the user set); ``wants`` is the keeper's look at its scope's wants.
    """

    def __init__(self, pool: PoolPlan, wants: Wants) -> None:
        self.pool = pool
        self.leases: list[Lease] = []
        self.wants = wants
        self._blas_generation: int | None = None
        self._blas: list = []  # the process-wide BLAS pools, found again after a load
        self._last_look: tuple[float, float] | None = None  # (wall, CPU) time of the last look
        self._load = ForeignLoad()  # other programs on the CPUs it would borrow

    @property
    def cores(self) -> frozenset[int]:
        """The CPUs borrowed now."""
        return frozenset().union(*(lease.cores for lease in self.leases))

    def borrow(self, home: AppliedSlot) -> None:
        """Borrow every slot of the pool that no lease, no want and no busy pinned process
        holds, and widen onto them (nothing where no process-wide BLAS pool could use them);
        give every loan back instead while other programs keep those CPUs busy."""
        if not self._find_blas() or _pinned_threads_live():
            return
        taken = home.cores | self.cores | self.wants.cpus()
        slots = [s for s in dict.fromkeys(self.pool.slots + self.pool.grow) if not s & taken]
        lent = self.cores.union(*slots)
        busy = self._load.busy(home.cores | lent, lent)
        if busy:
            # Another program (no lease, pinned nowhere) keeps them busy: a BLAS call
            # widened there waits for its slower half (:mod:`.foreign_load`).
            self.give_back(home)
            return
        if busy is None and not self.leases:
            return  # nothing known yet: borrow at the next look
        new = []
        for slot in slots:
            try:
                new.append(claim(slot, scope=self.pool.scope, owner=self.pool.owner, loan=True))
            except LeaseConflict:
                continue
        if new and self.pool.avoid_pins:
            busy = pinned_cpus(self.pool.cpus, leases=list_leases(self.pool.scope))
            for lease in [lease for lease in new if lease.cores & busy]:
                new.remove(lease)
                lease.release()
        if new:
            self.leases += new
            self._set(home.cores, home.cores | self.cores, len(home.cores | self.cores))

    def task_started(self) -> None:
        """A task starts: :meth:`computing` measures from here."""
        self._last_look = (time.monotonic(), time.process_time())

    def computing(self) -> bool:
        """Whether this process used at least half a CPU since the task started or the last
        call (a task that sleeps or waits gains nothing from a loan, which others would have
        to recall)."""
        wall, cpu = time.monotonic(), time.process_time()
        last, self._last_look = self._last_look, (wall, cpu)
        return last is not None and cpu - last[1] >= (wall - last[0]) / 2

    def recalled(self) -> bool:
        """Whether a claim wants a borrowed CPU."""
        return bool(self.leases) and bool(self.wants.cpus() & self.cores)

    def give_back(self, home: AppliedSlot) -> None:
        """Narrow back to ``home`` (BLAS pools first, then the threads' CPUs) and release
        every loan. The running BLAS call, if any, ends with the threads it started with,
        on the home slot's CPUs."""
        if not self.leases:
            return
        leases, self.leases = self.leases, []
        try:
            self._set(home.cores, home.cores, home.threads)
        finally:
            for lease in leases:
                lease.release()

    def _set(self, home: frozenset[int], cores: frozenset[int], threads: int) -> None:
        """Put the BLAS helpers on ``cores`` and the BLAS pools at ``threads``: wider than
        ``home`` when borrowing (CPUs first: OpenBLAS started with 1 thread makes its helpers
        as the limit rises, with the raising thread's CPUs), ``home`` again when giving back
        (the limit first: no call starts with more threads than CPUs)."""
        widening = cores != home
        me = threading.get_native_id()
        if widening:
            _platform.set_thread_affinity(me, cores)
        try:
            with _THREADPOOLCTL_LOCK:
                for lib in self._blas:
                    force_threads(lib, threads)
        finally:
            if widening:
                _platform.set_thread_affinity(me, home)
        for tid in native_threads():
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                _platform.set_thread_affinity(tid, cores)

    def _find_blas(self) -> list:
        generation = loads.generation()
        if generation != self._blas_generation:
            self._blas_generation = generation
            with _THREADPOOLCTL_LOCK:
                self._blas = process_wide_blas(ThreadpoolController())
        return self._blas


def native_threads() -> list[int]:
    """This process's threads that are not Python's: the BLAS pools' helpers (and OpenMP
    teams), whose number pinbackend sets. Python threads, the task's own among them, keep
    the slot's CPUs: code that sizes itself by its affinity mid-task never sees a loan."""
    python = {thread.native_id for thread in threading.enumerate()}
    return [tid for tid in _platform.list_thread_ids() if tid not in python]


def _pinned_threads_live() -> bool:
    cap = STATE.blas_cap
    return cap is not None and (cap.active or cap.entering)
