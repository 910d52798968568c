"""The lifecycle's first step: read this host once per plan.

A :class:`Survey` holds the topology (live affinity mask), the live leases of this
process's lease scope and the CPU budget (cgroup quota and cpuset, ``PYTHON_CPU_COUNT``,
``PINBACKEND_CPU_COUNT``), with the CPUs other processes of this cgroup hold against its
quota. Every plan of every entry point starts from one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from ..core.budget import Budget, cores_within
from ..core.cpuset import format_cpu_list
from ..core.topology import Topology
from .budget import quota_peers, read_budget
from .holders import LeaseInfo, describe_holder, list_leases
from .machine import read_topology
from .options import PinOptions
from .policy import JobCores, job_cores
from .slot import current_scope, in_slot

__all__ = ["Survey", "job_view", "survey", "survey_scope"]


@dataclasses.dataclass(frozen=True)
class Survey:
    """One reading of this host: its topology and the live leases of this process's scope.

    ``owner`` is this process: leases of pools it planned (``LeaseInfo.owner``) are its own
    workers, which a new plan reuses or replaces, never strangers.
    """

    topology: Topology
    scope: str
    owner: int
    leases: tuple[LeaseInfo, ...]
    budget: Budget | None = None
    #: CPUs other processes in this process's CPU cgroup hold: its quota is theirs too.
    budget_used: frozenset[int] = frozenset()

    @property
    def held_by_others(self) -> frozenset[int]:
        """CPUs held (not shared) by leases of other jobs or other processes' pools."""
        return frozenset().union(
            *(info.cores - info.shared for info in self.leases if info.owner != self.owner)
        )

    def free(self, reserve: Iterable[int] = ()) -> frozenset[int]:
        """Allowed CPUs minus ``reserve`` minus those other jobs hold."""
        return self.topology.allowed - frozenset(reserve) - self.held_by_others

    def beyond_budget(self, reserve: Iterable[int] = ()) -> frozenset[int]:
        """Free CPUs that a new slot may not use: those beyond what is left of the budget."""
        if self.budget is None:
            return frozenset()
        free = self.free(reserve)
        left = self.budget.cpus - len(self.budget_used)
        return free if left < 1 else free - cores_within(self.topology, free, left)

    def holders(self, cpus: Iterable[int]) -> str:
        """Who holds ``cpus``, for messages: ``pid 12 (python job.py)``, or ``nobody``."""
        cpus = frozenset(cpus)
        found = [
            f"CPUs {format_cpu_list(info.cores & cpus)} by {describe_holder(info)}"
            for info in self.leases
            if info.cores & cpus and info.owner != self.owner
        ]
        return "; ".join(found) or "nobody"


def survey() -> Survey:
    """Read this host once: topology (live affinity), the leases in this process's scope and
    the CPU budget (cgroup quota and cpuset, ``PYTHON_CPU_COUNT``, ``PINBACKEND_CPU_COUNT``)."""
    scope = current_scope()
    topology = read_topology()
    owner = os.getpid()
    leases = tuple(list_leases(scope))
    budget = read_budget(topology=topology)
    used = frozenset()
    if any(limit.kind == "quota" for limit in budget.binding):
        used = quota_peers(info for info in leases if info.owner != owner)
    return Survey(topology, scope, owner, leases, budget, used & topology.allowed)


def job_view(options: PinOptions, view: Survey | None = None) -> JobCores:
    """What this process may use for a new pool, from one survey (the joblib backend's view:
    its own pools' workers are reused, never waited for)."""
    view = view or survey()
    return job_cores(
        view.topology,
        options,
        nested=in_slot(),
        scope=view.scope,
        leases=view.leases,
        me=view.owner,
        budget=view.budget,
        budget_used=view.budget_used,
    )


def survey_scope(scope: str) -> Survey:
    """A survey of another lease scope than this process's own (no budget: a nested scope
    lies within a slot, already within it)."""
    return Survey(read_topology(), scope, os.getpid(), tuple(list_leases(scope)))
