"""The one slot lifecycle: survey, decide, claim, apply, release. Every front door calls it.

- **survey** (:func:`pinbackend.host.view.survey`): one :class:`HostView` of the topology,
  the leases and the CPU budget per decision;
- **decide** (:func:`decide_waiting`): the policy's pure decision
  (:func:`~pinbackend.host.policy.decide`) on a view, waiting where the policy says so;
- **claim** (:func:`join_pool`, :func:`lease_slot`, :func:`claim_exact`): all or nothing,
  bounded by the claim timeout, and watched for the pool owner's death from its first moment;
- **apply** (:func:`pinbackend.host.slot.apply_slot`): pinning plus every cap, undoable;
- **release** (:func:`release_slot`): the lease given back and the applied slot undone (an
  idle pool worker, a Dask worker's teardown); on exit the kernel drops the locks.

The joblib backend, the Dask plugin and preload, the runner and ``run`` only wire these
steps into their frameworks.
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
from ..core.planner import OversubscriptionWarning, Plan
from . import loads, notices
from .caps import user_thread_limits
from .groups import least_crowded
from .holders import list_leases
from .leases import Lease, LeaseConflict, claim, claim_first_free
from .options import PinOptions
from .policy import COMMAND_LINE, KEYWORDS, ClaimFailed, Decision, Request, Spelling, decide
from .pool import PoolPlan
from .slot import AppliedSlot, apply_slot
from .state import STATE
from .view import HostView, Members, survey

__all__ = [
    "SlotHold",
    "claim_exact",
    "decide_waiting",
    "hold_slot",
    "join_pool",
    "lease_slot",
    "pool_from",
    "release_slot",
    "report_decision",
    "report_plan",
    "task_in_slot",
]

_WAIT_POLL_SECONDS = 0.1
#: An idle pool worker gives its lease back after this long without a task, so that
#: another job can have its cores; its next task takes them (or others) back.
IDLE_RELEASE_SECONDS = 0.5
#: How long a pool that would be clamped by other jobs' cores waits for them first (an idle
#: pool's workers release at different moments, within IDLE_RELEASE_SECONDS of each other).
CLAMP_GRACE_SECONDS = 2 * IDLE_RELEASE_SECONDS


def decide_waiting(
    read_view: Callable[[], HostView],
    options: PinOptions,
    request: Request,
    *,
    announce: bool = True,
) -> tuple[Decision, HostView]:
    """Ask the policy (:func:`pinbackend.host.policy.decide`) and wait while it says so,
    polling ``read_view``: a bounded wait raises :class:`ClaimFailed` after
    ``options.claim_timeout``, naming who holds the cores; a refusal raises at once.
    ``announce`` warns once (:class:`~pinbackend.host.notices.WaitingForCoresWarning`) when
    a wait begins.

    A pool clamped because other jobs hold cores first gives them :data:`CLAMP_GRACE_SECONDS`
    to free up: idle pinned pools give their cores back that fast, and a job started just
    after another one's call returned should get every core, not the first one freed.
    """
    view = read_view()
    deadline = grace = None
    announced = not announce
    while True:
        decision = decide(view, options, request)
        if decision.plan is not None and decision.held_by_others:
            grace = grace or time.monotonic() + min(CLAMP_GRACE_SECONDS, options.claim_timeout)
            if time.monotonic() < grace:
                time.sleep(_WAIT_POLL_SECONDS)
                view = read_view()
                continue
        if decision.plan is not None:
            return decision, view
        if decision.bounded:
            deadline = deadline or time.monotonic() + options.claim_timeout
            if time.monotonic() >= deadline:
                raise ClaimFailed(
                    f"{decision.shortage}; none freed up within {options.claim_timeout:g}s "
                    f"({request.spelling.timeout}); {decision.remedy}",
                    view.strangers,
                    view.others,
                    decision.policy,
                )
        if not announced:
            notices.warn(notices.WaitingForCoresWarning, decision.waiting)
            announced = True
        time.sleep(_WAIT_POLL_SECONDS)
        view = read_view()


def report_decision(decision: Decision, what: str) -> None:
    """Say what the policy had to do, once per process for each distinct outcome."""
    if decision.note and STATE.warn_once(f"resized: {decision.note}"):
        notices.warn(notices.PoolResizedWarning, decision.note)
    if decision.shared_with_others:
        notices.warn(
            notices.SharedCoresWarning,
            f"{what}: no core is free, so its {decision.plan.n_workers} worker(s) share CPUs "
            f"{format_cpu_list(frozenset().union(*decision.plan.slots))} with other jobs "
            f"(oversubscribe='share'); expect both to slow down",
        )
    else:
        report_plan(decision.plan, what)


def pool_from(
    decision: Decision, view: HostView, options: PinOptions, threads: int | None = None
) -> PoolPlan:
    """The plan that travels to the pool's workers.

    Under a CPU budget smaller than the slots' CPUs (a 1-CPU quota on an SMT core), each
    worker's threads are capped to its share of the budget: workers x threads never exceed it.
    """
    slots = set(decision.plan.slots)
    left = view.budget_left
    if left is not None and sum(map(len, slots)) > left:
        share = max(left // len(slots), 1)
        threads = share if threads is None else min(threads, share)
    return PoolPlan(
        slots=decision.plan.slots,
        scope=view.scope,
        owner=os.getpid(),
        shared=decision.plan.shared or decision.shared_with_others,
        threads=threads,
        claim_timeout=options.claim_timeout,
        requested=decision.plan.requested,
        user_limits=tuple(sorted(user_thread_limits(os.environ).items())),
    )


def report_plan(plan: Plan | PoolPlan, what: str = "") -> None:
    """Warn where the user can see it about what a plan had to do (workers sharing cores)."""
    note = Plan(plan.slots, frozenset().union(*plan.slots), plan.shared, plan.requested)
    message = note.sharing_note()
    if message:
        notices.warn(
            OversubscriptionWarning,
            f"{what + ': ' if what else ''}{message}",
            "workers-share-core-sets",
        )


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
    try:
        lease = _claim_pool_slot(pool)
        try:
            applied = _apply_pool_slot(pool, lease)
        except BaseException:
            lease.release()
            raise
    except Exception as error:
        STATE.claim_error = error
        raise
    STATE.claim_error = None
    if yield_when_idle:
        STATE.keeper = _SlotKeeper(pool, lease, applied)
        STATE.keeper.start()
    return applied


def _apply_pool_slot(pool: PoolPlan, lease: Lease) -> AppliedSlot:
    threads = len(lease.cores) if pool.threads is None else min(pool.threads, len(lease.cores))
    return apply_slot(
        lease.cores, lease=lease, threads=threads, own_process=True, lower=dict(pool.user_limits)
    )


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

    def __init__(self, pool: PoolPlan, lease: Lease, applied: AppliedSlot):
        self.pool = pool
        self.lease: Lease | None = lease
        #: The slot applied last: undone while released, its cores claimed first again.
        self.applied = applied
        self.running = 0
        self.last_task = time.monotonic()
        self.lock = threading.Lock()
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
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1
                self.last_task = time.monotonic()

    def _watch(self) -> None:
        while STATE.keeper is self:
            time.sleep(IDLE_RELEASE_SECONDS / 5)
            with self.lock:
                idle = time.monotonic() - self.last_task >= IDLE_RELEASE_SECONDS
                if self.running == 0 and idle and self.lease is not None:
                    lease, self.lease = self.lease, None
                    try:
                        release_slot(self.applied, lease, keep_pool=True)
                    except Exception:
                        pass  # a thread kept the slot's CPUs (one went offline): re-pinned soon

    def _reclaim(self, *, wait: bool = True) -> Lease:
        try:
            lease = claim(self.applied.cores, scope=self.pool.scope, owner=self.pool.owner)
        except LeaseConflict:
            # Another job took them: any free slot of the pool (waiting, unless told not to).
            pool = self.pool if wait else dataclasses.replace(self.pool, claim_timeout=0.0)
            lease = _claim_pool_slot(pool)
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


def _claim_pool_slot(pool: PoolPlan) -> Lease:
    distinct = list(dict.fromkeys(pool.slots))
    if not pool.shared:
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


def lease_slot(
    cores: int,
    options: PinOptions,
    *,
    command: str,
    scope: str | None = None,
    members: Members | None = None,
    spelling: Spelling = KEYWORDS,
) -> Lease:
    """Decide a slot of ``cores`` physical cores for this process by policy and claim it.

    For a process that pins itself (``run -n``, a Dask worker): one worker, which waits
    (bounded by ``options.claim_timeout``; without bound under ``wait``) while other jobs
    hold the cores, re-deciding when another process takes the planned ones first, and
    shares them at once under ``share``. An impossible slot (more cores than the host has)
    fails at once. ``members`` tells the leases of the caller's own group apart (a Dask
    cluster's workers on this host): waiting for them cannot help, so when they hold every
    slot of this size the policy applies at once (:class:`ClaimFailed`). ``spelling`` names
    the remedies in the caller's words.
    """
    sized = options.updated(cores_per_worker=cores)
    request = Request(command, workers=1, one_worker=True, spelling=spelling)
    while True:
        decision, view = decide_waiting(
            lambda: survey(sized, scope=scope, nested=False, group=members),
            sized,
            request,
            announce=False,
        )
        try:
            return claim(
                decision.plan.slots[0],
                scope=view.scope,
                share=decision.shared_with_others,
                command=command,
            )
        except LeaseConflict:
            continue  # another job took these cores between deciding and claiming


def claim_exact(cpus: frozenset[int], options: PinOptions, *, command: str) -> Lease:
    """Claim exactly ``cpus`` for this process (``run --cores``), by policy: shared under
    ``share``, waited for up to the claim timeout under ``clamp``, refused under ``error``."""
    request = Request(command, cores=frozenset(cpus), spelling=COMMAND_LINE)
    while True:
        decision, view = decide_waiting(lambda: survey(options), options, request, announce=False)
        try:
            return claim(cpus, scope=view.scope, share=decision.shared_with_others, command=command)
        except LeaseConflict:
            continue


def release_slot(
    applied: AppliedSlot | None = None, lease: Lease | None = None, *, keep_pool: bool = False
) -> None:
    """The one release: undo ``applied`` in this process (:meth:`AppliedSlot.undo`: CPUs,
    caps, environment, ``os.cpu_count``) and give ``lease`` back, both idempotent; then
    forget the pool this process worked for, unless ``keep_pool`` (an idle pool worker, which
    claims again for its next task).

    The lease is given back even where the undo fails, whose error is raised after.
    """
    try:
        if applied is not None:
            applied.undo()
    finally:
        if lease is not None:
            lease.release()
        if not keep_pool:
            STATE.pool = None
            STATE.claim_error = None
