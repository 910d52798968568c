"""A pool worker's life on its slot: join the pool, run tasks on the slot, give the slot back
while idle and take it again, and end with the pool's owner.

Each new pool worker (loky's, the runner's ``multiprocessing`` and ``concurrent.futures``
workers) claims the first free planned slot of its :class:`~pinbackend.host.pool.PoolPlan`
and applies it (:func:`join_pool`); its tasks run through :func:`task_in_slot`. A joblib
worker's keeper also lends its idle slot to a sibling's running task and borrows idle
siblings' slots (:mod:`.lending`), and gives its slot to another job that asks for a fair
share (:mod:`.fair`). Right after
pinning, it looks once more at the host (:func:`_move_once`): another user's job that pinned
itself to the same CPUs at the same instant cannot be seen in any registry this worker reads
(see :mod:`~pinbackend.host.foreign`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections import Counter
from collections.abc import Callable

from .. import _platform
from ..core.cpuset import format_cpu_list
from . import loads, notices
from .fair import UNCLAIMED_SECONDS, PoolShare, ShareRequest
from .foreign import pinned_cpus, pinned_first
from .groups import least_crowded
from .holders import describe_holder, list_leases
from .host_wants import host_wants
from .leases import Lease, LeaseConflict, claim, claim_first_free
from .lending import BORROW_POLL_SECONDS, LEND_AFTER_SECONDS, RECALL_POLL_SECONDS, Loans
from .lifecycle import IDLE_RELEASE_SECONDS, release_slot
from .pool import PoolPlan
from .slot import AppliedSlot, apply_slot
from .state import STATE
from .wants import Wants

__all__ = ["SlotHold", "hold_slot", "join_pool", "task_in_slot"]

#: How often a worker that found its slot taken looks again.
_WAIT_POLL_SECONDS = 0.1


def join_pool(pool: PoolPlan, *, yield_when_idle: bool = False) -> AppliedSlot:
    """In a new pool worker: claim a free slot of ``pool`` and apply it; record the outcome.

    The owner watch starts first, so a worker still waiting for a slot ends with its pool's
    owner. The claim is all or nothing and bounded by ``pool.claim_timeout``; on failure
    the error is kept in :data:`~pinbackend.host.state.STATE` (so that the worker's tasks
    can raise it in the caller, see :func:`task_in_slot`) and raised. With
    ``yield_when_idle`` the worker gives its lease back after :data:`IDLE_RELEASE_SECONDS`
    without a task and takes it again for the next one.
    """
    _exit_with_owner(pool.owner)
    STATE.pool = pool
    asking = ShareRequest() if yield_when_idle else None
    try:
        lease = _claim_pool_slot(pool, asking)
        try:
            applied = _apply_pool_slot(pool, lease)
        except BaseException:
            lease.release()
            raise
        lease, applied = _move_once(pool, lease, applied)
    except Exception as error:
        if asking is not None:
            asking.end()
        STATE.claim_error = error
        raise
    STATE.claim_error = None
    if asking is not None:
        STATE.keeper = _SlotKeeper(pool, lease, applied, asking)
        STATE.keeper.start()
    return applied


def _apply_pool_slot(pool: PoolPlan, lease: Lease) -> AppliedSlot:
    threads = len(lease.cores) if pool.threads is None else min(pool.threads, len(lease.cores))
    return apply_slot(
        lease.cores, lease=lease, threads=threads, own_process=True, lower=dict(pool.user_limits)
    )


def _move_once(pool: PoolPlan, lease: Lease, applied: AppliedSlot) -> tuple[Lease, AppliedSlot]:
    """Right after pinning: if a busy process of another job (no lease here) that started
    before this worker is pinned to part of the slot (:func:`.pinned_first`), move once to a
    free slot of the pool (free of leases and of busy pins). Where none is free, wait, as a
    pool with no free core does, up to the claim timeout, for that process to go idle or
    end (stay) or for a slot to free up (move); then share, saying so once. What is left:
    two processes that pin within one look of each other, the older one last.
    """
    if not pool.avoid_pins or pool.shared:
        return lease, applied
    job_cpus = pool.cpus
    leases = list_leases(pool.scope)
    earlier = pinned_first(lease.cores, job_cpus, leases=leases)
    deadline = time.monotonic() + pool.claim_timeout
    while earlier:
        moved = _free_slot(pool, lease, job_cpus, leases)
        if moved is not None:
            release_slot(applied, lease, keep_pool=True)
            try:
                return moved, _apply_pool_slot(pool, moved)
            except BaseException:
                moved.release()
                raise
        if time.monotonic() >= deadline:
            if STATE.warn_once(f"pinned-neighbour:{format_cpu_list(lease.cores)}"):
                notices.warn(
                    notices.SharedCoresWarning,
                    f"CPUs {format_cpu_list(lease.cores)} of this pool worker are also used by "
                    f"{describe_holder(earlier[0])}, which pinned itself there first, and no "
                    f"slot of the pool freed up within {pool.claim_timeout:g}s: they share",
                )
            break
        time.sleep(_WAIT_POLL_SECONDS)
        earlier = pinned_first(lease.cores, job_cpus, leases=leases)
    return lease, applied


def _free_slot(pool: PoolPlan, lease: Lease, job_cpus, leases) -> Lease | None:
    """A slot of ``pool`` other than ``lease``'s that no lease and no busy pin holds, claimed."""
    taken = pinned_cpus(job_cpus, leases=leases)
    slots = dict.fromkeys(pool.slots + pool.grow)
    others = [slot for slot in slots if not slot & (taken | lease.cores)]
    if not others:
        return None
    try:
        return claim_first_free(others, scope=pool.scope, owner=pool.owner)
    except LeaseConflict:
        return None


def task_in_slot(func: Callable[[], object]) -> object:
    """Run one task of a pool worker on its slot, holding the slot's lease meanwhile.

    A worker whose claim failed tries once more without waiting (the cores it waited for
    may be free by now: executors reuse workers across calls), then raises the claim error,
    which reaches the caller as itself.
    """
    if STATE.keeper is None and STATE.claim_error is not None and STATE.pool is not None:
        error = STATE.claim_error
        try:
            join_pool(dataclasses.replace(STATE.pool, claim_timeout=0.0), yield_when_idle=True)
        except Exception:
            raise error from None
    if STATE.keeper is None:
        return func()
    with STATE.keeper.busy():
        return func()


class _SlotKeeper:
    """Releases an idle pool worker's slot, and claims and applies one again for the next task.

    Idle workers of a pool whose call has returned would otherwise keep their cores for as
    long as the executor keeps them (loky: 300 s), and every other job on the host would
    find no core free. A released worker (:func:`release_slot`: lease back, slot undone) is
    back on the CPUs, caps and environment it had before its slot, and idle; its next task
    claims the same cores again or, if another job took them, another free slot of its
    pool, waiting up to the claim timeout, and applies it (a few lock operations, pinning
    and caps).

    The claim comes before the worker does any work for the task (:meth:`hold`): loky reads
    the whole pickled task from a pipe and unpickles it in the worker's main thread before
    running it, and a large argument took up to 0.7 s of CPU on cores that another job held
    by then. As the task arrives, the worker takes a slot that is free at once (the message
    may be loky's shutdown sentinel: no waiting for it); as it unpickles, before the
    arguments, it waits for one if it has none yet.
    """

    def __init__(self, pool: PoolPlan, lease: Lease, applied: AppliedSlot, asking: ShareRequest):
        self.pool = pool
        #: Its job's request for a fair share, made while it waited for a slot other jobs
        #: held; withdrawn when the slot goes back (released while idle, or yielded).
        self.asking = asking
        self.lease: Lease | None = lease
        #: The slot applied last: undone while released, its cores claimed first again.
        self.applied = applied
        self.running = 0
        self.last_task = self.task_started = self.last_borrow = time.monotonic()
        self.lock = threading.Lock()
        #: Idle slots' cores this worker borrows while its task runs (:mod:`.lending`).
        wants = Wants(pool.scope, host_wants() if not pool.scope else None)
        self.loans = Loans(pool, wants) if pool.lend else None
        self.idle_release = LEND_AFTER_SECONDS if self.loans else IDLE_RELEASE_SECONDS
        #: Fair share (:mod:`.fair`): the slot goes to a job that asks, at a task's end.
        self.share = PoolShare(pool, wants) if not pool.shared else None
        self.yielded, self.yielded_at = False, 0.0
        #: True: a task arrived and holds the lease (counted in ``running``) until it runs.
        #: An exception: holding failed, and the task raises it.
        self.held: bool | Exception = False

    def start(self) -> None:
        """Start watching for idleness (once this keeper is the process's keeper), and count
        extension-module loads: applying the slot again then reuses the thread-pool libraries
        found, unless a module loaded since (see :mod:`pinbackend.host.caps`)."""
        loads.watch_extension_loads()
        threading.Thread(target=self._watch, name="pinbackend-idle-release", daemon=True).start()

    def hold(self, *, wait: bool) -> None:
        """Hold a slot for the task that is arriving (``wait=False``: only a slot free at
        once) or being unpickled (``wait=True``: up to the claim timeout).

        Never raises (an error while loky reads a task ends the worker): a failed claim is
        kept, and the task raises it (:meth:`busy`) without waiting again.
        """
        with self.lock:
            if self.held is not False:
                return  # held (or failed) for this task already
            if self.lease is None:
                try:
                    self.lease = self._reclaim(wait=wait)
                except Exception as error:
                    if wait:
                        self.held = error
                    return
            self.running += 1
            self.held = True

    @contextlib.contextmanager
    def busy(self):
        """Hold the slot's lease while a task runs (claiming it again if it was released)."""
        with self.lock:
            held, self.held = self.held, False
            if isinstance(held, Exception):
                raise held
            if not held:  # counted in running since it arrived, if held
                if self.lease is None:
                    self.lease = self._reclaim()
                self.running += 1
            self.task_started = time.monotonic()
            if self.loans is not None:
                self.loans.task_started()
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1
                self.last_task = time.monotonic()
                if self.loans is not None:
                    self._give_back()
                if self.share is not None and self.lease is not None:
                    self._yield_if_asked()

    def _watch(self) -> None:
        tick = RECALL_POLL_SECONDS if self.loans is not None else IDLE_RELEASE_SECONDS / 5
        while STATE.keeper is self:
            time.sleep(tick)
            with self.lock:
                if self.loans is not None and self.running and self.lease is not None:
                    self._lend()
                idle = time.monotonic() - self.last_task >= self.idle_release
                if self.running == 0 and idle and self.lease is not None:
                    lease, self.lease = self.lease, None
                    self.asking.end()  # its job got its share: the slot goes back now
                    try:
                        release_slot(self.applied, lease, keep_pool=True)
                    except Exception:
                        pass  # a thread kept the slot's CPUs (one went offline): re-pinned soon

    def _lend(self) -> None:
        """While a task runs: give the loans back if a claim wants them, else borrow the
        pool's free slots once the task has run :data:`.LEND_AFTER_SECONDS`."""
        now = time.monotonic()
        try:
            if self.loans.recalled():
                self.loans.give_back(self.applied)
            elif (
                now - self.task_started >= LEND_AFTER_SECONDS
                and now - self.last_borrow >= BORROW_POLL_SECONDS
            ):
                self.last_borrow, busy = now, self.loans.computing()
                if busy:
                    self.loans.borrow(self.applied)
        except Exception:
            self._give_back()
            self.loans = None  # lending failed here (a CPU went offline?): stop lending

    def recall_loans(self) -> None:
        """Give the loans back now: a pinned thread pool starts in the running task, and the
        process-wide BLAS pools become its cap's (:class:`~.blas_cap.ProcessWideCap`)."""
        with self.lock:
            if self.loans is not None:
                self._give_back()

    def _give_back(self) -> None:
        try:
            self.loans.give_back(self.applied)
        except Exception:
            pass  # the loans are released; only a home CPU gone offline fails a narrowing

    def _yield_if_asked(self) -> None:
        """At a task's end: give the slot to another job that asks for its fair share."""
        try:
            if not self.share.should_yield(self.applied.cores):
                return
        except Exception:
            return  # the registry cannot be read now: keep the slot, look again next time
        lease, self.lease = self.lease, None
        self.yielded, self.yielded_at = True, time.monotonic()
        self.asking.end()
        with contextlib.suppress(Exception):
            release_slot(self.applied, lease, keep_pool=True)

    def _take_back(self, *, wait: bool) -> Lease:
        """For a worker that yielded: wait, with no time limit (see :mod:`.fair`), until its
        pool may take a slot again; then claim a free one, its own first, waiting up to the
        claim timeout as any worker does for a slot another job took."""
        slots = list(dict.fromkeys((self.applied.cores, *self.pool.slots, *self.pool.grow)))
        while not self.share.may_take():
            if not wait:
                raise LeaseConflict("this worker gave its slot to a fair share", frozenset(), ())
            if time.monotonic() - self.yielded_at >= UNCLAIMED_SECONDS:
                with contextlib.suppress(LeaseConflict):
                    lease = claim(self.applied.cores, scope=self.pool.scope, owner=self.pool.owner)
                    self.share.unclaimed()  # nobody took it: the asker takes nothing
                    self.yielded = False
                    return lease
                self.yielded_at = float("inf")  # taken: wait for the share, as before
            time.sleep(_WAIT_POLL_SECONDS)
        timeout = self.pool.claim_timeout if wait else 0.0
        lease = claim_first_free(
            slots, scope=self.pool.scope, timeout=timeout, owner=self.pool.owner
        )
        self.yielded = False
        return lease

    def _reclaim(self, *, wait: bool = True) -> Lease:
        try:
            if self.yielded:
                lease = self._take_back(wait=wait)
            else:
                lease = claim(self.applied.cores, scope=self.pool.scope, owner=self.pool.owner)
        except LeaseConflict:
            if self.yielded:
                raise
            # Another job took them: any free slot of the pool (waiting, unless told not to).
            pool = self.pool if wait else dataclasses.replace(self.pool, claim_timeout=0.0)
            lease = _claim_pool_slot(pool, self.asking)
        try:
            self.applied = _apply_pool_slot(self.pool, lease)
        except BaseException:
            lease.release()
            raise
        return lease


def hold_slot(*, wait: bool = True) -> None:
    """In a pool worker that gives its lease back when idle: hold a slot for the task that
    arrives (``wait=False``) or is being unpickled (see :meth:`_SlotKeeper.hold`).
    Elsewhere (no keeper: a parent, a worker whose claim failed) nothing."""
    keeper = STATE.keeper
    if keeper is not None:
        keeper.hold(wait=wait)


class SlotHold:
    """Pickled ahead of a task's arguments: unpickling it in a pool worker calls
    :func:`hold_slot`, so that the worker holds its cores before it unpickles them."""

    __slots__ = ()

    def __reduce__(self):
        return (hold_slot, ())


def _claim_pool_slot(pool: PoolPlan, asking: ShareRequest | None = None) -> Lease:
    """Claim a free slot of ``pool``, waiting up to its claim timeout. With ``asking``
    (a joblib worker's), a wait asks for the job's fair share (:mod:`.fair`) and the
    request stays until the caller ends it: once the worker gives its slot back."""
    # The planned slots first; a slot to grow into once they are all taken by siblings.
    distinct = list(dict.fromkeys(pool.slots + pool.grow))
    if not pool.shared:
        if asking is not None and pool.claim_timeout:
            try:
                return claim_first_free(distinct, scope=pool.scope, owner=pool.owner)
            except LeaseConflict as conflict:
                # Another job took them since the plan (two jobs that planned at the same
                # instant): unheard, this worker would wait for that job's whole call.
                asking.ask_for(pool.scope, frozenset(conflict.busy), job=pool.owner)
        return claim_first_free(
            distinct, scope=pool.scope, timeout=pool.claim_timeout, owner=pool.owner
        )
    try:
        return claim_first_free(distinct, scope=pool.scope, owner=pool.owner)
    except LeaseConflict:
        pass  # every slot is taken: share the least crowded one
    holders = Counter(info.cores for info in list_leases(pool.scope))
    # (The pool's owner warned once that its workers share; workers say nothing more.)
    least = least_crowded(distinct, [holders[cores] for cores in distinct])
    return claim(least, scope=pool.scope, share=True, owner=pool.owner)


def _exit_with_owner(owner: int) -> None:
    """End this worker when the process that planned its pool dies (SIGKILL included).

    Pool workers blocked on their task queue (or on a claim) never notice a killed parent
    (loky's queue pipes stay open in every worker), and would keep or wait for leases:
    watch the owner instead. One watch per process.
    """
    if owner == os.getpid():
        return
    with STATE.lock:
        if STATE.watched_owner == owner:
            return
        STATE.watched_owner = owner

    def watch() -> None:
        _platform.wait_for_exit(owner)
        os._exit(70)  # EX_SOFTWARE: our pool's owner is gone

    threading.Thread(target=watch, name="pinbackend-owner-watch", daemon=True).start()
