"""One view of the host: what a claimant may use, read once per decision.

Every claimant (a joblib pool, a runner pool, a thread pool's shares, a Dask worker, ``run``)
asks the policy (:func:`pinbackend.host.policy.decide`) one question on one
:class:`HostView`: the topology (live affinity mask), the CPU budget, and the live leases of
the claimant's lease scope, told apart as

- **this process's own workers** (leases whose ``owner`` is this process: its pools'
  workers, reused or replaced, never waited for),
- **its group** (``group``: the other workers of a Dask cluster on this host; waiting for
  them cannot help),
- **other jobs** (everything else: waited for, clamped around or shared, by policy),
  among them ``pinned``: processes of any user that hold no lease here but run pinned to
  part of the job's CPUs (:mod:`~pinbackend.host.foreign`; ``other_pins="ignore"`` leaves
  them out).

:func:`survey` reads the host; :func:`host_view` builds a view from what was read (pure, for
snapshots and tests).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable

from ..core.budget import Budget, cores_within
from ..core.cpuset import format_cpu_list
from ..core.topology import Topology
from .budget import quota_peers, read_budget
from .foreign import pinned_holders
from .holders import LeaseInfo, describe_holder, list_leases
from .machine import read_topology
from .options import PinOptions
from .slot import current_scope, in_slot

__all__ = ["HostView", "Members", "host_view", "survey"]

#: Tells the leases of a claimant's own group (a Dask cluster's workers) from other jobs'.
Members = Callable[[LeaseInfo], bool]


@dataclasses.dataclass(frozen=True)
class HostView:
    """What one claimant may use on this host, right now.

    ``usable``: the CPUs of the job here (allowed, within the runner's ``--cores``, minus the
    reserved ones; inside a pinned worker, its slot). ``nested``: the claimant runs inside a
    pinned worker's slot (the policy is then always ``clamp``, and the budget is the slot's).
    ``me``: this process (the owner its pools' workers record). ``own_pools``: CPUs of this
    process's pools still running (the runner's). ``budget``: the CPU budget (quota, cpuset,
    variables), with ``budget_used``, the CPUs other processes of this cgroup hold against
    its quota. ``group``: which leases belong to the claimant's own group, if it has one.
    """

    topology: Topology
    usable: frozenset[int]
    scope: str = ""
    me: int | None = None
    nested: bool = False
    leases: tuple[LeaseInfo, ...] = ()
    own_pools: frozenset[int] = frozenset()
    budget: Budget | None = None
    budget_used: frozenset[int] = frozenset()
    group: Members | None = dataclasses.field(default=None, compare=False)
    pinned: tuple[LeaseInfo, ...] = ()

    # Who holds what.

    @property
    def others(self) -> tuple[LeaseInfo, ...]:
        """Leases of other processes' pools and jobs, the group's members included, and the
        processes pinned to the job's CPUs without a lease here. Loans are not among them:
        their borrowers give them back as soon as a claim wants them (:mod:`.lending`)."""
        mine = self.me is not None
        leases = (i for i in self.leases if (not mine or i.owner != self.me) and not i.loan)
        return tuple(leases) + self.pinned

    @property
    def members(self) -> tuple[LeaseInfo, ...]:
        """Leases of the claimant's own group (none without a group)."""
        group = self.group
        if group is None:
            return ()
        return tuple(info for info in self.others if info.source == "lease" and group(info))

    @property
    def strangers(self) -> frozenset[int]:
        """CPUs held (not shared) by other processes' leases (the group's included)."""
        return _held(self.others) & self.topology.allowed

    @property
    def other_jobs(self) -> frozenset[int]:
        """CPUs held by leases that are neither this process's nor its group's."""
        return self.strangers - _held(self.members)

    @property
    def own(self) -> frozenset[int]:
        """CPUs of this process's own pools that still run."""
        return self.own_pools & self.topology.allowed

    @property
    def stray(self) -> frozenset[int]:
        """CPUs leased by this process's workers that belong to none of its running pools
        (joblib's idle workers, workers still exiting)."""
        if self.me is None:
            return frozenset()
        mine = frozenset().union(*(i.cores for i in self.leases if i.owner == self.me))
        return (mine - self.own) & self.topology.allowed

    # What is left.

    @property
    def budget_left(self) -> int | None:
        """CPUs of the budget a new slot may still use (None: no budget applies)."""
        if self.nested or self.budget is None:
            return None
        return self.budget.cpus - len(self.budget_used)

    def budget_reason(self) -> str:
        """Where the budget comes from, and who else in this cgroup uses it."""
        if self.budget_left is None:
            return ""
        if not self.budget_used:
            return self.budget.reason()
        return (
            f"{self.budget.reason()}, of which other processes of this cgroup hold "
            f"CPUs {format_cpu_list(self.budget_used)}"
        )

    def within_budget(self, cpus: frozenset[int]) -> frozenset[int]:
        """The whole cores of ``cpus`` that fit what is left of the budget, close together
        (none when others in this cgroup use all of it)."""
        left = self.budget_left
        if left is None:
            return cpus
        if left < 1:
            return frozenset()
        return cores_within(self.topology, cpus, left)

    @property
    def free(self) -> frozenset[int]:
        """CPUs a new slot can have without waiting or sharing, within the budget: no CPU
        of a physical core that another process or pool holds part of (SMT siblings share
        the core's execution units: a slot on the other half would share it)."""
        return self.within_budget(self.usable - self.whole_cores(self.strangers | self.own))

    def whole_cores(self, cpus: frozenset[int]) -> frozenset[int]:
        """``cpus`` with the SMT siblings of each."""
        return frozenset().union(*(core for core in self.topology.cores if core & cpus))

    @property
    def reachable(self) -> frozenset[int]:
        """CPUs a new slot could ever have here (other jobs' ones once they end)."""
        return self.within_budget(self.usable - self.whole_cores(self.own))

    def holders(self, cpus: Iterable[int], *, jobs_only: bool = False) -> str:
        """Who holds ``cpus``, for messages: ``CPUs 0 by pid 12 (python job.py)``, the
        program's own pools, or ``nothing``; ``jobs_only``: other jobs, not the group nor
        this process's own lease."""
        cpus = frozenset(cpus)
        skip = (*self.members, *(i for i in self.others if i.pid == self.me)) if jobs_only else ()
        parts = [
            f"CPUs {format_cpu_list(info.cores & cpus)} by {describe_holder(info)}"
            for info in self.others
            if info.cores & cpus and info not in skip
        ]
        if self.own & cpus:
            parts.append(f"CPUs {format_cpu_list(self.own & cpus)} by this program's other pools")
        return "; ".join(parts) or "nothing"


def _held(leases: Iterable[LeaseInfo]) -> frozenset[int]:
    return frozenset().union(*(info.cores - info.shared for info in leases))


def host_view(
    topology: Topology,
    options: PinOptions,
    *,
    cores: frozenset[int] | None = None,
    nested: bool = False,
    **read,
) -> HostView:
    """A view from what was read (pure): the job's CPUs are the allowed ones within
    ``cores`` minus ``options.reserve`` (inside a pinned worker, the slot as it is);
    ``read`` gives :class:`HostView`'s other fields."""
    usable = topology.allowed
    if not nested:
        usable = (usable if cores is None else usable & cores) - options.reserve
    return HostView(topology, usable, nested=nested, **read)


def survey(
    options: PinOptions,
    *,
    scope: str | None = None,
    cores: frozenset[int] | None = None,
    nested: bool | None = None,
    own_pools: frozenset[int] = frozenset(),
    group: Members | None = None,
) -> HostView:
    """Read this host once: topology (live affinity), the leases of ``scope`` (default: this
    process's own scope), the CPU budget, and the processes pinned to the job's CPUs without
    a lease here; see :class:`HostView` for the rest.

    ``nested`` defaults to whether this process runs in a slot. A scope other than this
    process's own lies within a slot, already within the budget: none is read for it. Inside
    a slot (a scope other than the host's) the slot is the job's own: nobody else's pins are
    looked for there.
    """
    own_scope = current_scope()
    scope = own_scope if scope is None else scope
    nested = in_slot() if nested is None else nested
    topology = read_topology()
    me = os.getpid()
    leases = tuple(list_leases(scope))
    budget, used = None, frozenset()
    if scope == own_scope:
        budget = read_budget(topology=topology)
        if any(limit.kind == "quota" for limit in budget.binding):
            used = quota_peers(info for info in leases if info.owner != me)
    pinned = ()
    if scope == "" and not nested and options.other_pins == "avoid":
        pinned = pinned_holders(topology.allowed, leases=leases, me=me)
    return host_view(
        topology,
        options,
        cores=cores,
        nested=nested,
        pinned=pinned,
        scope=scope,
        me=me,
        leases=leases,
        own_pools=own_pools,
        budget=budget,
        budget_used=used & topology.allowed,
        group=group,
    )
