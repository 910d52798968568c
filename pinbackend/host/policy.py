"""The policy: the one decision every claimant asks for its slots. Pure.

A joblib pool, a runner pool, a thread pool's shares, a Dask worker (one worker with its
group), ``run -n`` and ``run --cores`` each ask :func:`decide` with a :class:`Request` on one
:class:`~pinbackend.host.view.HostView`; the answer (:class:`Decision`) is the slots, a note
when fewer workers run than asked, why the claimant must wait, or a refusal. Clamp, wait,
share and error are interpreted here and nowhere else. :mod:`pinbackend.host.lifecycle`
surveys, waits, claims and reports.
Messages name remedies in the caller's own spelling (:data:`KEYWORDS` or
:data:`COMMAND_LINE`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..core.cpuset import format_cpu_list
from ..core.planner import Plan, PlanError, plan_slots
from .groups import group_cpus, group_room, least_crowded
from .holders import describe_holder
from .leases import LeaseConflict
from .options import PinOptions, spelled
from .view import HostView

__all__ = [
    "COMMAND_LINE",
    "KEYWORDS",
    "ClaimFailed",
    "Decision",
    "Request",
    "Spelling",
    "count",
    "decide",
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
class Request:
    """What a claimant asks the policy for.

    ``what`` names it in messages. ``workers``: how many (None: as many as fit); the
    runner's ``processes`` (``-p``) replaces it outside pinned workers. ``one_worker``: a
    process that pins itself (a Dask worker, ``run -n``): it cannot run with fewer workers,
    so where a pool would be clamped it waits, bounded by the claim timeout, and when its
    group (:attr:`HostView.group`) holds every slot of its size the policy applies at once.
    ``cores``: exactly these CPUs (``run --cores``), no planning.
    """

    what: str
    workers: int | None = None
    processes: int | None = None
    one_worker: bool = False
    cores: frozenset[int] | None = None
    spelling: Spelling = KEYWORDS


@dataclass(frozen=True)
class Decision:
    """The slots for a claimant, or why it must wait or cannot have any; plus what to tell
    the user."""

    plan: Plan | None
    note: str | None = None
    waiting: str | None = None
    #: The wait ends with :class:`ClaimFailed` after the claim timeout; otherwise it lasts
    #: until the cores are free (the ``"wait"`` policy).
    bounded: bool = False
    #: What is missing (who holds the cores), for the message that ends a bounded wait.
    shortage: str | None = None
    #: The remedies that message names, in the caller's spelling.
    remedy: str | None = None
    shared_with_others: bool = False
    #: A clamp that other jobs' cores caused (the job has more): they may free up at once.
    held_by_others: bool = False
    #: The policy that decided (what a claim failure after this decision names).
    policy: str = "clamp"
    #: Slots a clamped pool may add, each once no other job holds its cores any more
    #: (grow back: :func:`pinbackend.host.lifecycle.grow_room`).
    grow: tuple[frozenset[int], ...] = ()


class ClaimFailed(LeaseConflict, PlanError):
    """No slot could be had: a bounded wait ended, or the claimant's own group holds every
    slot. Carries who holds what (``busy``, ``holders``) and which ``policy`` applied; the
    one claim failure every entry point renders (a ``LeaseConflict`` and a ``PlanError``)."""

    def __init__(self, message: str, busy: frozenset[int], holders, policy: str = "clamp"):
        super().__init__(message, busy, holders)
        self.policy = policy

    def __reduce__(self):
        return type(self), (str(self), self.busy, self.holders, self.policy)


def decide(view: HostView, options: PinOptions, request: Request) -> Decision:
    """Choose the slots for ``request`` on ``view`` by policy: the one decision.

    Inside a pinned worker the policy is always ``clamp`` (a nested pool never leaves its
    worker's cores). The policies: ``clamp`` runs what fits (with a note) and waits, bounded
    by the claim timeout, when nothing fits; ``error`` fails (a process pinning itself waits
    like ``clamp``: it has no fewer workers to run); ``share`` shares; ``wait`` waits for
    every worker's cores. Raises :class:`PlanError` when the policy says fail or the request
    could never fit.
    """
    topology = view.topology
    unknown = options.reserve - topology.online
    if unknown and not view.nested:
        raise PlanError(
            f"reserve names CPUs {format_cpu_list(unknown)} that this machine does not have "
            f"online (online CPUs: {format_cpu_list(topology.online)}); pick reserved CPUs "
            f"among them"
        )
    if request.cores is not None:
        return _explicit(view, options, request)
    pool = _Pool(view, options, request)
    decision = dataclasses.replace(pool.decide(), policy=pool.policy)
    if decision.held_by_others and pool.policy == "clamp" and not request.one_worker:
        decision = dataclasses.replace(decision, grow=_grow_slots(view, options, request, decision))
    return decision


def _grow_slots(
    view: HostView, options: PinOptions, request: Request, decision: Decision
) -> tuple[frozenset[int], ...]:
    """The slots a pool clamped by other jobs' cores could add as those free up: the plan it
    would have if no other job held any, less what overlaps its own slots, up to the
    workers it asked for."""
    if view.nested or decision.plan is None:
        return ()
    alone = dataclasses.replace(
        view, leases=tuple(info for info in view.leases if info not in view.others), pinned=()
    )
    pool = _Pool(alone, options, request)
    try:
        full = pool.decide().plan
    except PlanError:
        return ()
    if full is None:
        return ()
    plan = decision.plan
    taken = frozenset().union(*plan.slots)
    extra = [slot for slot in dict.fromkeys(full.slots) if not slot & taken]
    missing = len(extra) if pool.asked is None else pool.asked - plan.n_workers
    return tuple(extra[: max(missing, 0)])


class _Pool:
    """One decision on a request for planned slots (see :func:`decide`)."""

    def __init__(self, view: HostView, options: PinOptions, request: Request):
        self.view, self.request, self.topology = view, request, view.topology
        self.spelling = request.spelling
        self.policy = "clamp" if view.nested else options.policy("clamp")
        self.per_worker = None if view.nested else options.cores_per_worker
        self.size = self.per_worker or 1
        asked = request.workers
        if not view.nested and request.processes is not None:
            asked = request.processes
        self.source = ""
        if not view.nested and request.processes is not None:
            self.source = f" ({self.spelling.workers(request.processes)})"
        self.free, self.job = view.free, view.reachable
        self.fit_free = self.topology.count_cores(self.free) // self.size
        self.fit_job = self.topology.count_cores(self.job) // self.size
        self.asked = asked
        self.n = asked if asked is not None else (self.fit_free or self.fit_job)
        self.reserve = self.topology.allowed - view.usable
        self.busy = view.usable - self.free  # other jobs', own pools', beyond the budget
        budgeted = view.budget_left is not None and self.job != view.usable - view.own
        self.budget_note = f"; the CPU budget is {view.budget_reason()}" if budgeted else ""

    def plan(self, n_workers: int, busy: frozenset[int], oversubscribe: str = "error") -> Plan:
        """The planner on the job's CPUs, with ``busy`` left out."""
        return plan_slots(
            self.topology,
            n_workers,
            cores_per_worker=self.per_worker,
            reserve=self.reserve,
            busy=busy,
            oversubscribe=oversubscribe,
        )

    def decide(self) -> Decision:
        if self.request.one_worker:
            return self.one_worker()
        if 1 <= self.n <= self.fit_free:
            # "As many as fit" while other jobs hold some of the job's cores: those may be
            # an idle pool's, given back within moments of each other (see decide_waiting).
            as_many = self.request.workers is None and self.request.processes is None
            return Decision(
                self.plan(self.n, self.busy), held_by_others=as_many and self.fit_job > self.n
            )
        if self.fit_job == 0:
            self.refuse_never_fits()
        shortage = self.shortage()
        if self.policy == "error":
            spelling = self.spelling
            raise PlanError(
                f"{shortage}; use {spelling.workers(max(self.fit_free, 1))}, or "
                f"{spelling.policy('clamp')}, {spelling.policy('wait')} or "
                f"{spelling.policy('share')}"
            )
        if self.policy == "clamp":
            return self.clamp(shortage)
        if self.policy == "share":
            if self.fit_free >= 1:
                return Decision(self.plan(self.n, self.busy, "share"))
            return Decision(
                self.plan(self.n, self.view.usable - self.job, "share"), shared_with_others=True
            )
        return self.wait(shortage)

    def refuse_never_fits(self) -> None:
        """Raise: no worker of this size could ever run here (or this program's own pools
        hold every core)."""
        view, spelling, what = self.view, self.spelling, self.request.what
        ever = view.within_budget(view.usable)  # the budget too: it may bind
        have = self.topology.count_cores(ever)
        if have < self.size:
            raise PlanError(
                f"no room for {what}: a worker needs {count(self.size, 'physical core')} "
                f"({spelling.cores_per_worker}) but the job has only {have} "
                f"(CPUs {format_cpu_list(ever) or 'none'}{self.budget_note}); ask for fewer "
                f"cores per worker, or give it {spelling.more_cores}"
            )
        raise PlanError(
            f"no core for {what}: the job's CPUs {format_cpu_list(view.usable)} are all used "
            f"by {view.holders(view.usable)}; close this program's other pools first, "
            f"or give it {spelling.more_cores}"
        )

    def shortage(self) -> str:
        free = self.fit_free * self.size
        return (
            f"{self.request.what} asks for {count(self.n, 'worker')}{self.source} of "
            f"{count(self.size, 'core')} but only {count(free, 'physical core')} "
            f"{'is' if free == 1 else 'are'} free (CPUs {format_cpu_list(self.free) or 'none'}; "
            f"taken: {self.view.holders(self.view.usable - self.free)}{self.budget_note})"
        )

    def remedy(self) -> str:
        spelling = self.spelling
        return f"use {spelling.policy('share')}, a longer {spelling.timeout}, or free some cores"

    def clamp(self, shortage: str) -> Decision:
        if self.fit_free >= 1:
            free = self.fit_free * self.size
            return Decision(
                self.plan(self.fit_free, self.busy),
                note=f"{self.request.what} runs {count(self.fit_free, 'worker')} instead of "
                f"{self.n}{self.source}: only {count(free, 'physical core')} "
                f"{'is' if free == 1 else 'are'} free (CPUs {format_cpu_list(self.free)}"
                f"{self.budget_note}); pass {self.spelling.policy('error')} to get an error "
                f"instead",
                held_by_others=self.fit_job > self.fit_free,
            )
        return Decision(
            None,
            waiting=f"{shortage}; waiting up to the claim timeout ({self.spelling.timeout}) "
            f"for a core to free up",
            bounded=True,
            shortage=shortage,
            remedy=self.remedy(),
        )

    def wait(self, shortage: str) -> Decision:
        """Never wait for more than the job could ever get, nor for its own pools."""
        target = min(self.n, self.fit_job)
        note = None
        if target < self.n:
            note = (
                f"{self.request.what} runs {count(target, 'worker')} instead of "
                f"{self.n}{self.source}: the job has only "
                f"{count(self.fit_job * self.size, 'physical core')} "
                f"(CPUs {format_cpu_list(self.job)}{self.budget_note})"
            )
        if target <= self.fit_free:
            return Decision(self.plan(target, self.busy), note=note)
        return Decision(
            None,
            note=note,
            waiting=f"{shortage}; waiting for other jobs to end",
            shortage=shortage,
        )

    def one_worker(self) -> Decision:
        """A process pinning itself: a free slot of its size, else never fewer workers."""
        if self.fit_free >= 1:
            return Decision(self.plan(1, self.busy))
        self.refuse_slot_never_fits()
        view, size = self.view, self.size
        if self.policy == "share":
            return Decision(self.least_crowded(), shared_with_others=True)
        room = group_room(view, size)
        if view.group is not None and room.full:
            raise ClaimFailed(
                f"this host has room for {count(room.slots, 'slot')} of "
                f"{count(size, 'physical core')}, and {room.held} of the group's own hold "
                f"them all",
                view.strangers,
                view.members,
                self.policy,
            )
        taken = view.holders(view.strangers) if view.strangers else "nobody"
        shortage = (
            f"no {size} free physical core(s): allowed CPUs "
            f"{format_cpu_list(self.topology.allowed)}, held by {taken}{self.budget_note}"
        )
        waiting = f"{shortage}; waiting for a slot of {count(size, 'physical core')}"
        if self.policy == "wait":
            return Decision(None, waiting=waiting, shortage=shortage)
        return Decision(
            None,
            waiting=waiting,
            bounded=True,
            shortage=shortage,
            remedy="raise the claim timeout, share, or wait for those jobs",
        )

    def refuse_slot_never_fits(self) -> None:
        """Raise when waiting cannot help a process pinning itself: its slot could never
        fit this host (its allowed CPUs less the reserved ones, within the CPU budget)."""
        topology, reserve = self.topology, self.reserve
        usable, room_cpus, budget_note = self.view.usable, group_cpus(self.view), ""
        if topology.count_cores(room_cpus) < topology.count_cores(usable):
            budget_note = f"; the CPU budget is {self.view.budget.reason()}"
        room = topology.count_cores(room_cpus)
        if self.size <= room:
            return
        slot = count(self.size, "physical core")
        allowed, reserved_list = format_cpu_list(topology.allowed), format_cpu_list(reserve)
        if not usable:
            raise PlanError(
                f"a slot of {slot} cannot fit: every CPU this process may use is reserved "
                f"(allowed {allowed}, reserved {reserved_list}); reserve fewer CPUs"
            )
        reserved = f", with {reserved_list} reserved" if reserve else ""
        raise PlanError(
            f"a slot of {slot} cannot fit: this process may use {count(room, 'physical core')} "
            f"(CPUs {format_cpu_list(room_cpus)}{reserved}{budget_note}); ask for at most "
            f"{count(room, 'core')}"
            + (", or reserve fewer CPUs" if reserved and not budget_note else "")
        )

    def least_crowded(self) -> Plan:
        """The slot of the claimant's size that the fewest live leases touch."""
        room = self.topology.count_cores(self.view.usable) // self.size
        slots = self.plan(room, frozenset(), "share").slots
        crowd = [sum(1 for info in self.view.others if info.cores & slot) for slot in slots]
        slot = least_crowded(slots, crowd, self.view.me)
        return Plan((slot,), slot, shared=False, requested=1)


def _explicit(view: HostView, options: PinOptions, request: Request) -> Decision:
    """Exactly ``request.cores`` (``run --cores``): shared, waited for or refused by policy."""
    cores = request.cores
    missing = cores - view.topology.allowed
    if missing:
        raise PlanError(
            f"CPUs {format_cpu_list(missing)} are not allowed here (allowed CPUs: "
            f"{format_cpu_list(view.topology.allowed)}); pick among them"
        )
    plan = Plan((cores,), cores, shared=False, requested=1)
    busy = cores & view.strangers
    policy = options.policy("clamp")
    if not busy:
        return Decision(plan, policy=policy)
    holders = [info for info in view.others if info.cores & busy]
    shortage = f"CPUs {format_cpu_list(busy)} are held by " + "; ".join(
        describe_holder(info) for info in holders
    )
    if policy == "share":
        return Decision(plan, shared_with_others=True, policy=policy)
    if policy == "error":
        raise ClaimFailed(
            f"{shortage}. Pick other CPUs, wait for those jobs, or allow sharing",
            busy,
            holders,
            policy,
        )
    return Decision(
        None,
        waiting=f"{shortage}; waiting for them",
        bounded=policy != "wait",
        shortage=shortage,
        remedy="pick other CPUs, wait for those jobs, or allow sharing",
        policy=policy,
    )
