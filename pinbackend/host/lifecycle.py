"""The one slot lifecycle: survey, decide, claim, apply, release. Every front door calls it.

- **survey** (:func:`pinbackend.host.view.survey`): one :class:`HostView` of the topology,
  the leases and the CPU budget per decision;
- **decide** (:func:`decide_waiting`): the policy's pure decision
  (:func:`~pinbackend.host.policy.decide`) on a view, waiting where the policy says so;
- **claim** (:func:`pinbackend.host.worker.join_pool` in a pool worker, :func:`lease_slot`,
  :func:`claim_exact`): all or nothing,
  bounded by the claim timeout, and watched for the pool owner's death from its first moment;
- **apply** (:func:`pinbackend.host.slot.apply_slot`): pinning plus every cap, undoable;
- **release** (:func:`release_slot`): the lease given back and the applied slot undone (an
  idle pool worker, a Dask worker's teardown); on exit the kernel drops the locks.

The joblib backend, the Dask plugin and preload, the runner and ``run`` only wire these
steps into their frameworks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ..core.cpuset import format_cpu_list
from ..core.planner import OversubscriptionWarning, Plan
from . import notices
from .caps import user_thread_limits
from .fair import ShareRequest, fair_share, jobs_among
from .foreign import pinned_cpus, pinned_first
from .holders import list_leases
from .leases import Lease, LeaseConflict, claim
from .options import PinOptions
from .policy import COMMAND_LINE, KEYWORDS, ClaimFailed, Decision, Request, Spelling, decide
from .pool import PoolPlan
from .slot import AppliedSlot, apply_slot
from .state import STATE
from .view import HostView, Members, survey

__all__ = [
    "claim_exact",
    "decide_waiting",
    "grow_room",
    "lease_slot",
    "move_once",
    "pool_from",
    "release_slot",
    "report_decision",
    "report_plan",
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
    on_wait: Callable[[HostView], None] | None = None,
) -> tuple[Decision, HostView]:
    """Ask the policy (:func:`pinbackend.host.policy.decide`) and wait while it says so,
    polling ``read_view``: a bounded wait raises :class:`ClaimFailed` after
    ``options.claim_timeout``, naming who holds the cores; a refusal raises at once.
    ``announce`` warns once (:class:`~pinbackend.host.notices.WaitingForCoresWarning`) when
    a wait begins. ``on_wait`` is called with the view before each wait, and with a pool's
    plan that other jobs' cores clamped (a pool asks for its fair share there: :mod:`.fair`).

    A pool clamped because other jobs' pool workers hold cores first gives them
    :data:`CLAMP_GRACE_SECONDS` to free up (:data:`IDLE_RELEASE_SECONDS` once it has its
    fair share, :mod:`.fair`): idle pinned pools give their cores back that fast, and a job
    started just after another one's call returned should get every core, not the first
    one freed. Cores that only other kinds of holders keep (``run``, a Dask
    worker, a pinned process) are not waited for: the pool starts clamped and grows into
    them when they free up.
    """
    view = read_view()
    deadline = grace = None
    announced = not announce
    while True:
        decision = decide(view, options, request)
        if decision.plan is not None and decision.held_by_others and _pools_hold(view):
            grace = grace or time.monotonic()
            # A plan with the job's fair share waits only as long as idle pools take to let go.
            limit = CLAMP_GRACE_SECONDS if _below_share(decision, view) else IDLE_RELEASE_SECONDS
            if time.monotonic() < grace + min(limit, options.claim_timeout):
                if on_wait is not None:
                    on_wait(view)
                time.sleep(_WAIT_POLL_SECONDS)
                view = read_view()
                continue
        if decision.plan is not None:
            if decision.held_by_others and on_wait is not None and not request.one_worker:
                # A pool clamped by other jobs asks all the same: a planned slot can be
                # taken before its worker claims it, which then waits for it unheard.
                on_wait(view)
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
        if on_wait is not None:
            on_wait(view)
        time.sleep(_WAIT_POLL_SECONDS)
        view = read_view()


def _below_share(decision: Decision, view: HostView) -> bool:
    """Whether a plan has fewer CPUs than the job's fair share (:mod:`.fair`): a plan with
    its share starts now rather than wait for more."""
    planned = len(frozenset().union(*decision.plan.slots))
    jobs = 1 + len(jobs_among(view.others, view.me))
    return planned < fair_share(len(view.usable), jobs)


def _pools_hold(view: HostView) -> bool:
    """Whether workers of another process's pools (which release when idle) hold cores."""
    return any(
        info.source == "lease" and info.owner not in (None, info.pid) for info in view.others
    )


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
    shared = decision.plan.shared or decision.shared_with_others
    user_limits = tuple(sorted(user_thread_limits(os.environ).items()))
    return PoolPlan(
        slots=decision.plan.slots,
        scope=view.scope,
        owner=os.getpid(),
        shared=shared,
        threads=threads,
        claim_timeout=options.claim_timeout,
        requested=decision.plan.requested,
        user_limits=user_limits,
        avoid_pins=options.other_pins == "avoid",
        grow=decision.grow,
        job_cpus=view.topology.allowed,
        # Lending would break a promise in a pool that shares or whose caps the user set.
        lend=not (options.fixed_slots or shared or threads is not None or user_limits),
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
    the remedies in the caller's words. While it waits for other jobs' pool workers, it
    asks for its fair share (:mod:`.fair`): they give it a slot at their next task end.
    """
    sized = options.updated(cores_per_worker=cores)
    request = Request(command, workers=1, one_worker=True, spelling=spelling)
    # Asked while it waits, withdrawn once the slot is leased: a lease is not given back
    # when idle, so the pools that shrank for it cannot take its cores back meanwhile.
    share = ShareRequest()
    try:
        while True:
            decision, view = decide_waiting(
                lambda: survey(sized, scope=scope, nested=False, group=members),
                sized,
                request,
                announce=False,
                on_wait=share.ask,
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
    finally:
        share.end()


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


def grow_room(pool: PoolPlan) -> int:
    """How many of ``pool.grow``'s slots the pool may use now: those no lease but its own
    workers' or a loan (given back on demand) and no busy pinned process holds (its workers
    claim them, see :func:`pinbackend.host.worker.join_pool`). A few lock probes and, with
    ``other_pins`` avoided, one look at the host's pinned processes: about 1-15 ms."""
    if not pool.grow:
        return 0
    leases = list_leases(pool.scope)
    held = frozenset().union(
        *(info.cores - info.shared for info in leases if info.owner != pool.owner and not info.loan)
    )
    if pool.avoid_pins:
        held |= pinned_cpus(pool.cpus, leases=leases)
    return sum(1 for slot in pool.grow if not slot & held)


def move_once(
    lease: Lease,
    applied: AppliedSlot,
    job_cpus: frozenset[int],
    again: Callable[[], Lease],
) -> tuple[Lease, AppliedSlot]:
    """For a process that pinned itself to a slot it leased (``run -n``): right after
    pinning, if a busy process of another job that started first is pinned to part of the
    slot (:func:`~pinbackend.host.foreign.pinned_first`), give the slot back and lease once
    more (``again``: the decision now sees that process), then apply that one."""
    if not pinned_first(lease.cores, job_cpus, leases=list_leases(lease.info.scope)):
        return lease, applied
    release_slot(applied, lease)
    lease = again()
    return lease, apply_slot(lease.cores, lease=lease, own_process=True)


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
