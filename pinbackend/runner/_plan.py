"""Plan each pool the runner starts: the job's free cores, its policy, this process's live pools.

:func:`decide` is pure: given what the job may use and what is busy, it returns the slots,
a note when the pool got fewer workers than asked, or the reason to wait. The functions
around it read the host (topology, leases), wait when the policy says so, and remember the
pools this process started, whose cores a second pool must not reuse while they live.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from .. import _platform
from ..core.cpuset import format_cpu_list
from ..core.planner import OversubscriptionWarning, Plan, PlanError, plan_slots
from ..core.topology import Topology
from ..host import lifecycle
from ..host.leases import LeaseInfo
from ..host.pool import PoolPlan
from ..host.slot import current_slot
from . import _warnings
from ._config import RunnerConfig

__all__ = [
    "JobCores",
    "PoolDecision",
    "decide",
    "job_cores",
    "live_pool_cpus",
    "plan_process_pool",
    "survey",
    "thread_pool_size",
    "track_pool",
]

_WAIT_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class JobCores:
    """What one process of a runner job may use for a new pool, right now.

    ``usable``: the CPUs of the job here (allowed, within ``--cores``, minus ``--reserve``;
    inside a pinned worker, its slot). ``strangers``: CPUs held by leases of other jobs or
    pools planned by other processes. ``own``: CPUs of this process's pools still alive.
    ``stray``: CPUs leased by workers of this process that belong to no live runner pool
    (joblib's idle workers, workers still exiting).
    """

    topology: Topology
    nested: bool
    scope: str
    usable: frozenset[int]
    strangers: frozenset[int] = frozenset()
    own: frozenset[int] = frozenset()
    stray: frozenset[int] = frozenset()
    holders: tuple[LeaseInfo, ...] = ()

    @property
    def free(self) -> frozenset[int]:
        """CPUs a new pool can have without waiting or sharing."""
        return self.usable - self.strangers - self.own


def job_cores(
    topology: Topology,
    config: RunnerConfig,
    *,
    nested: bool = False,
    scope: str = "",
    leases: tuple[LeaseInfo, ...] = (),
    own: frozenset[int] = frozenset(),
    me: int | None = None,
) -> JobCores:
    """Build :class:`JobCores` from the topology, the settings and the live leases (pure)."""
    usable = topology.allowed
    if not nested:
        if config.cores is not None:
            usable = usable & config.cores
        usable = usable - config.reserve
    others = tuple(info for info in leases if me is None or info.owner != me)
    strangers = frozenset().union(*(info.cores - info.shared for info in others))
    mine = frozenset().union(*(info.cores for info in leases if info not in others))
    return JobCores(
        topology=topology,
        nested=nested,
        scope=scope,
        usable=usable,
        strangers=strangers & topology.allowed,
        own=own & topology.allowed,
        stray=(mine - own) & topology.allowed,
        holders=others,
    )


@dataclass(frozen=True)
class PoolDecision:
    """The slots for a pool, or why it must wait; plus what to tell the user."""

    plan: Plan | None
    note: str | None = None
    waiting: str | None = None
    shared_with_others: bool = False


def _holders_text(view: JobCores, cpus: frozenset[int]) -> str:
    parts = [
        f"CPUs {format_cpu_list(info.cores & cpus)} by pid {info.pid} ({info.command})"
        for info in view.holders
        if info.cores & cpus
    ]
    if view.own & cpus:
        parts.append(f"CPUs {format_cpu_list(view.own & cpus)} by this program's other pools")
    return "; ".join(parts) or "nothing"


def decide(view: JobCores, config: RunnerConfig, requested: int | None, what: str) -> PoolDecision:
    """Choose the slots for a pool that asked for ``requested`` workers (None: as many as fit).

    ``-p`` replaces ``requested`` outside pinned workers. Inside a pinned worker the policy
    is always ``clamp`` (a nested pool never leaves its worker's cores). Raises
    :class:`PlanError` when the policy says fail; ``what`` names the pool in messages.
    """
    topology = view.topology
    policy = "clamp" if view.nested else config.oversubscribe
    per_worker = None if view.nested else config.cores_per_worker
    size = per_worker or 1
    asked = requested if view.nested or config.processes is None else config.processes
    source = "" if view.nested or config.processes is None else f" (-p {config.processes})"
    free, job = view.free, view.usable - view.own
    fit_free = topology.count_cores(free) // size
    fit_job = topology.count_cores(job) // size
    n = asked if asked is not None else (fit_free or fit_job)
    reserve = topology.allowed - view.usable
    busy = view.strangers | view.own

    def plan(n_workers: int, busy_cpus: frozenset[int], oversubscribe: str = "error") -> Plan:
        """The planner on the job's CPUs, with ``busy_cpus`` left out."""
        return plan_slots(
            topology,
            n_workers,
            cores_per_worker=per_worker,
            reserve=reserve,
            busy=busy_cpus,
            oversubscribe=oversubscribe,
        )

    if n >= 1 and n <= fit_free:
        return PoolDecision(plan(n, busy))
    if fit_job == 0:
        if topology.count_cores(view.usable) < size:
            raise PlanError(
                f"no room for {what}: a worker needs {size} physical core(s) "
                f"(--cores-per-worker) but the job has only {topology.count_cores(view.usable)} "
                f"(CPUs {format_cpu_list(view.usable) or 'none'}); ask for fewer cores per "
                f"worker, or give the job more (--cores, --reserve)"
            )
        raise PlanError(
            f"no core for {what}: the job's CPUs {format_cpu_list(view.usable)} are all used "
            f"by {_holders_text(view, view.usable)}; close this program's other pools first, "
            f"or give the job more cores (--cores, --reserve)"
        )
    shortage = (
        f"{what} asks for {n} worker(s){source} of {size} core(s) but only {fit_free * size} "
        f"physical core(s) are free (CPUs {format_cpu_list(free) or 'none'}; taken: "
        f"{_holders_text(view, view.usable - free)})"
    )
    if policy == "error":
        raise PlanError(
            f"{shortage}; use -p {max(fit_free, 1)}, or --oversubscribe clamp, wait or share"
        )
    if policy == "clamp":
        if fit_free >= 1:
            return PoolDecision(
                plan(fit_free, busy),
                note=f"{what} runs {fit_free} worker(s) instead of {n}{source}: only "
                f"{fit_free * size} physical core(s) are free (CPUs {format_cpu_list(free)})",
            )
        raise PlanError(
            f"{shortage}; use --oversubscribe wait to wait for them, --oversubscribe share "
            f"to share them (slower), or free some cores"
        )
    if policy == "share":
        if fit_free >= 1:
            return PoolDecision(plan(n, busy, "share"))
        return PoolDecision(plan(n, view.own, "share"), shared_with_others=True)
    # wait: never for more than the job could ever get, nor for this program's own pools.
    target = min(n, fit_job)
    note = None
    if target < n:
        note = (
            f"{what} runs {target} worker(s) instead of {n}{source}: the job has only "
            f"{fit_job * size} physical core(s) (CPUs {format_cpu_list(job)})"
        )
    if target <= fit_free:
        return PoolDecision(plan(target, busy), note=note)
    return PoolDecision(None, note=note, waiting=f"{shortage}; waiting for other jobs to end")


# Pools this process started, with a function telling whether their workers still run.
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LIVE_LOCK = threading.Lock()


def _forget_pools_in_child() -> None:
    # A forked worker inherits the table, but its parent's pools are not its own: keeping
    # them would hide every core of its slot from the pools it starts.
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    _LIVE.clear()


_platform.forget_in_forked_child(_forget_pools_in_child)


def track_pool(pool: object, plan: PoolPlan, alive: Callable[[object], bool]) -> None:
    """Remember ``pool``'s slots until it is collected or ``alive(pool)`` turns false."""
    with _LIVE_LOCK:
        _LIVE[pool] = (plan, alive)


def live_pool_cpus() -> frozenset[int]:
    """CPUs of this process's runner pools whose workers may still run."""
    with _LIVE_LOCK:
        entries = list(_LIVE.items())
    cpus: set[int] = set()
    for pool, (plan, alive) in entries:
        try:
            running = alive(pool)
        except Exception:
            running = True  # cannot tell: keep its cores out of new plans
        if running:
            cpus.update(*plan.slots)
        else:
            with _LIVE_LOCK:
                _LIVE.pop(pool, None)
    return frozenset(cpus)


def survey(config: RunnerConfig) -> JobCores:
    """Read this host now (the lifecycle's one survey) and add this process's live pools."""
    view = lifecycle.survey()
    return job_cores(
        view.topology,
        config,
        nested=current_slot() is not None,
        scope=view.scope,
        leases=view.leases,
        own=live_pool_cpus(),
        me=view.owner,
    )


def _decide_and_report(view: JobCores, config: RunnerConfig, requested, what) -> PoolDecision:
    # The planner states that workers share slots; say so at the user's line, with a link.
    decision = decide(view, config, requested, what)
    note = decision.plan.sharing_note() if decision.plan is not None else None
    if note:
        _warnings.warn(OversubscriptionWarning, f"{what}: {note}", "workers-share-core-sets")
    return decision


def plan_process_pool(
    config: RunnerConfig,
    requested: int | None,
    what: str,
    *,
    release_stray: Callable[[], bool] = lambda: False,
) -> PoolPlan:
    """Plan a process pool of this job (waiting if the policy says so) and say what changed.

    ``release_stray`` is called once when this process's own stray leases could be in the
    way (joblib's idle workers); it returns whether it released any.
    """
    view = survey(config)
    if view.stray and release_stray():
        view = survey(config)
    announced = False
    while True:
        decision = _decide_and_report(view, config, requested, what)
        if decision.plan is not None:
            break
        if not announced:
            _warnings.warn(_warnings.WaitingForCoresWarning, decision.waiting)
            announced = True
        time.sleep(_WAIT_POLL_SECONDS)
        view = survey(config)
    if decision.note:
        _warnings.warn(_warnings.PoolResizedWarning, decision.note)
    if decision.shared_with_others:
        _warnings.warn(
            _warnings.SharedCoresWarning,
            f"{what}: no core is free, so its {decision.plan.n_workers} worker(s) share CPUs "
            f"{format_cpu_list(frozenset().union(*decision.plan.slots))} with other jobs "
            f"(--oversubscribe share); expect both to slow down",
        )
    return PoolPlan(
        slots=decision.plan.slots,
        scope=view.scope,
        owner=os.getpid(),
        shared=decision.plan.shared or decision.shared_with_others,
        threads=None,
        claim_timeout=config.claim_timeout,
        requested=decision.plan.requested,
    )


def thread_pool_size(config: RunnerConfig, requested: int | None) -> tuple[int, int]:
    """Threads for a thread pool, and the OpenMP threads each of them may start.

    A pool without a size gets one thread per CPU this process may use (its slot in a
    pinned worker; the job's free CPUs, or ``--threads``, in the main process). An explicit
    size is kept (threads waiting on I/O are a fine reason for many); each thread's OpenMP
    team is capped so that all of them together fit those CPUs.
    """
    slot = current_slot()
    if slot is not None:
        cpus = len(slot.cores)
    else:
        view = survey(config)
        cpus = max(len(view.usable - view.strangers), 1)
        if config.threads is not None:
            cpus = min(cpus, config.threads)
    threads = cpus if requested is None else requested
    return threads, max(cpus // threads, 1)
