"""How many workers a pool gets, by policy: the one decision every entry point makes. Pure.

Given what a process may use now (:class:`JobCores`: the job's CPUs, those other jobs hold,
this process's own live pools) and the options, :func:`decide` returns the slots, a note
when the pool got fewer workers than asked, or why it must wait. The joblib backend and the
runner call it through :mod:`pinbackend.host.lifecycle`, which surveys, waits and reports.
Messages name remedies in the caller's own spelling (:data:`KEYWORDS` or
:data:`COMMAND_LINE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.budget import Budget, cores_within
from ..core.cpuset import format_cpu_list
from ..core.planner import Plan, PlanError, plan_slots
from ..core.topology import Topology
from .holders import LeaseInfo, describe_holder
from .options import PinOptions, spelled

__all__ = [
    "COMMAND_LINE",
    "KEYWORDS",
    "JobCores",
    "PoolDecision",
    "Spelling",
    "count",
    "decide",
    "job_cores",
]


def count(number: int, noun: str) -> str:
    """``1 core``, ``2 cores``: counts in messages, in good grammar."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


@dataclass(frozen=True)
class Spelling:
    """How the caller's user spells the remedies a message names."""

    workers: Callable[[int], str]
    policy: Callable[[str], str]
    cores_per_worker: str
    more_cores: str
    timeout: str


#: Python keyword arguments (the joblib backend, the Dask plugin), as the options declare them.
KEYWORDS = Spelling(
    workers=lambda n: f"n_jobs={n}",
    policy=lambda name: spelled("oversubscribe", name),
    cores_per_worker=spelled("cores_per_worker"),
    more_cores=f"fewer reserved CPUs ({spelled('reserve')}=)",
    timeout=spelled("claim_timeout"),
)
#: The runner's command line, with the flags the options declare.
COMMAND_LINE = Spelling(
    workers=lambda n: f"-p {n}",
    policy=lambda name: spelled("oversubscribe", name, command_line=True),
    cores_per_worker=spelled("cores_per_worker", command_line=True),
    more_cores=f"more cores for the job (--cores, {spelled('reserve', command_line=True)})",
    timeout=spelled("claim_timeout", command_line=True),
)


@dataclass(frozen=True)
class JobCores:
    """What one process may use for a new pool, right now.

    ``usable``: the CPUs of the job here (allowed, within the runner's ``--cores``, minus the
    reserved ones; inside a pinned worker, its slot). ``strangers``: CPUs held by leases of
    other jobs or pools planned by other processes. ``own``: CPUs of this process's pools
    still alive. ``stray``: CPUs leased by workers of this process that belong to no live
    runner pool (joblib's idle workers, workers still exiting). ``budget``: the CPU budget
    (:mod:`pinbackend.core.budget`: quota, cpuset, variables) a new pool may use, in CPUs;
    None inside a pinned worker, whose slot is already within it.
    """

    topology: Topology
    nested: bool
    scope: str
    usable: frozenset[int]
    strangers: frozenset[int] = frozenset()
    own: frozenset[int] = frozenset()
    stray: frozenset[int] = frozenset()
    holders: tuple[LeaseInfo, ...] = ()
    budget: int | None = None
    budget_reason: str = ""

    @property
    def free(self) -> frozenset[int]:
        """CPUs a new pool can have without waiting or sharing, within the budget."""
        return self.within_budget(self.usable - self.strangers - self.own)

    @property
    def reachable(self) -> frozenset[int]:
        """CPUs a new pool could ever have here (other jobs' ones once they end)."""
        return self.within_budget(self.usable - self.own)

    def within_budget(self, cpus: frozenset[int]) -> frozenset[int]:
        """The whole cores of ``cpus`` that fit what is left of the budget, close together
        (none when others in this cgroup use all of it)."""
        if self.budget is None:
            return cpus
        if self.budget < 1:
            return frozenset()
        return cores_within(self.topology, cpus, self.budget)


def job_cores(
    topology: Topology,
    config: PinOptions,
    *,
    cores: frozenset[int] | None = None,
    nested: bool = False,
    scope: str = "",
    leases: tuple[LeaseInfo, ...] = (),
    own: frozenset[int] = frozenset(),
    me: int | None = None,
    budget: Budget | None = None,
    budget_used: frozenset[int] = frozenset(),
) -> JobCores:
    """Build :class:`JobCores` from the topology, the settings, the live leases and the CPU
    budget, less ``budget_used`` (CPUs other processes of this cgroup hold, whose quota they
    share) (pure; the budget does not apply inside a pinned worker)."""
    usable = topology.allowed
    if not nested:
        if cores is not None:
            usable = usable & cores
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
        budget=None if nested or budget is None else budget.cpus - len(budget_used),
        budget_reason="" if nested or budget is None else _budget_reason(budget, budget_used),
    )


def _budget_reason(budget: Budget, used: frozenset[int]) -> str:
    if not used:
        return budget.reason()
    return (
        f"{budget.reason()}, of which other processes of this cgroup hold "
        f"CPUs {format_cpu_list(used)}"
    )


@dataclass(frozen=True)
class PoolDecision:
    """The slots for a pool, or why it must wait; plus what to tell the user."""

    plan: Plan | None
    note: str | None = None
    waiting: str | None = None
    shared_with_others: bool = False
    #: The wait ends with an error after the claim timeout (clamp with no free core);
    #: otherwise it lasts until the cores are free (the ``"wait"`` policy).
    bounded: bool = False
    #: A clamp that other jobs' cores caused (the job has more): they may free up at once.
    held_by_others: bool = False
    #: What is missing (who holds the cores), for the message that ends a bounded wait.
    shortage: str | None = None


def _holders_text(view: JobCores, cpus: frozenset[int]) -> str:
    parts = [
        f"CPUs {format_cpu_list(info.cores & cpus)} by {describe_holder(info)}"
        for info in view.holders
        if info.cores & cpus
    ]
    if view.own & cpus:
        parts.append(f"CPUs {format_cpu_list(view.own & cpus)} by this program's other pools")
    return "; ".join(parts) or "nothing"


def decide(
    view: JobCores,
    options: PinOptions,
    requested: int | None,
    what: str,
    *,
    processes: int | None = None,
    spelling: Spelling = KEYWORDS,
) -> PoolDecision:
    """Choose the slots for a pool that asked for ``requested`` workers (None: as many as fit).

    ``processes`` (the runner's ``-p``) replaces ``requested`` outside pinned workers.
    Inside a pinned worker the policy is always ``clamp`` (a nested pool never leaves its
    worker's cores). The policies: ``clamp`` runs what fits (with a note) and waits, bounded
    by the claim timeout, when no core is free; ``error`` fails; ``share`` shares;
    ``wait`` waits for every worker's cores. Raises :class:`PlanError` when the policy
    says fail; ``what`` names the pool in messages.
    """
    topology = view.topology
    unknown = options.reserve - topology.online
    if unknown and not view.nested:
        raise PlanError(
            f"reserve names CPUs {format_cpu_list(unknown)} that this machine does not have "
            f"online (online CPUs: {format_cpu_list(topology.online)}); pick reserved CPUs "
            f"among them"
        )
    policy = "clamp" if view.nested else options.policy("clamp")
    per_worker = None if view.nested else options.cores_per_worker
    size = per_worker or 1
    asked = requested if view.nested or processes is None else processes
    source = "" if view.nested or processes is None else f" ({spelling.workers(processes)})"
    free, job = view.free, view.reachable
    fit_free = topology.count_cores(free) // size
    fit_job = topology.count_cores(job) // size
    n = asked if asked is not None else (fit_free or fit_job)
    reserve = topology.allowed - view.usable
    busy = view.usable - free  # other jobs', this program's pools', beyond the budget
    budgeted = view.budget is not None and job != view.usable - view.own
    budget_note = f"; the CPU budget is {view.budget_reason}" if budgeted else ""

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
        ever = view.within_budget(view.usable)  # the budget too: it may bind
        have = topology.count_cores(ever)
        if have < size:
            raise PlanError(
                f"no room for {what}: a worker needs {count(size, 'physical core')} "
                f"({spelling.cores_per_worker}) but the job has only {have} "
                f"(CPUs {format_cpu_list(ever) or 'none'}{budget_note}); ask for fewer cores per "
                f"worker, or give it {spelling.more_cores}"
            )
        raise PlanError(
            f"no core for {what}: the job's CPUs {format_cpu_list(view.usable)} are all used "
            f"by {_holders_text(view, view.usable)}; close this program's other pools first, "
            f"or give it {spelling.more_cores}"
        )
    shortage = (
        f"{what} asks for {count(n, 'worker')}{source} of {count(size, 'core')} but only "
        f"{count(fit_free * size, 'physical core')} {'is' if fit_free * size == 1 else 'are'} "
        f"free (CPUs {format_cpu_list(free) or 'none'}; taken: "
        f"{_holders_text(view, view.usable - free)}"
        f"{budget_note})"
    )
    if policy == "error":
        raise PlanError(
            f"{shortage}; use {spelling.workers(max(fit_free, 1))}, or "
            f"{spelling.policy('clamp')}, {spelling.policy('wait')} or {spelling.policy('share')}"
        )
    if policy == "clamp":
        if fit_free >= 1:
            return PoolDecision(
                plan(fit_free, busy),
                note=f"{what} runs {count(fit_free, 'worker')} instead of {n}{source}: only "
                f"{count(fit_free * size, 'physical core')} "
                f"{'is' if fit_free * size == 1 else 'are'} free "
                f"(CPUs {format_cpu_list(free)}{budget_note}); pass {spelling.policy('error')} "
                f"to get an error instead",
                held_by_others=fit_job > fit_free,
            )
        return PoolDecision(
            None,
            waiting=f"{shortage}; waiting up to the claim timeout ({spelling.timeout}) for "
            f"a core to free up",
            bounded=True,
            shortage=shortage,
        )
    if policy == "share":
        if fit_free >= 1:
            return PoolDecision(plan(n, busy, "share"))
        return PoolDecision(plan(n, view.usable - job, "share"), shared_with_others=True)
    # wait: never for more than the job could ever get, nor for this program's own pools.
    target = min(n, fit_job)
    note = None
    if target < n:
        note = (
            f"{what} runs {count(target, 'worker')} instead of {n}{source}: the job has only "
            f"{count(fit_job * size, 'physical core')} (CPUs {format_cpu_list(job)}"
            f"{budget_note})"
        )
    if target <= fit_free:
        return PoolDecision(plan(target, busy), note=note)
    return PoolDecision(None, note=note, waiting=f"{shortage}; waiting for other jobs to end")
