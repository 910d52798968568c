"""A group's own members on one host: a Dask cluster's workers, told apart from other jobs.

A starting member never waits for its own group: when the group's live members already
hold every slot of its size the host has, the policy applies at once (see
:func:`pinbackend.host.lifecycle.lease_slot`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from ..core.budget import cores_within
from ..core.planner import plan_slots
from .holders import LeaseInfo
from .leases import Lease, claim
from .options import PinOptions
from .survey import Survey

__all__ = ["GroupRoom", "group_room", "least_crowded", "share_least_crowded"]


@dataclasses.dataclass(frozen=True)
class GroupRoom:
    """Slots of one size for a group's members on this host (a Dask cluster's workers).

    ``slots``: how many the host has (allowed CPUs minus reserved ones); ``free``: how many
    other jobs leave to the group; ``held``: how many its members hold. ``full``: the
    members hold every slot the host has, so a new member waiting for one would wait for
    its own group.
    """

    slots: int
    free: int
    held: int

    @property
    def full(self) -> bool:
        return self.held >= self.slots


def group_room(
    view: Survey, cores: int, options: PinOptions, members: Callable[[LeaseInfo], bool]
) -> GroupRoom:
    """Count the slots of ``cores`` physical cores a group has on the host of ``view`` (pure).

    Member leases count once each, whatever their size; shared ones are not held. The
    host's CPUs are those of the CPU budget, when the survey read one.
    """
    topology = view.topology
    usable = topology.allowed - options.reserve
    if view.budget is not None:  # the CPU budget (quota, cpuset, variables) bounds the host
        usable = cores_within(topology, usable, view.budget.cpus)
    others = frozenset().union(
        *(info.cores - info.shared for info in view.leases if not members(info))
    )
    held = sum(1 for info in view.leases if members(info) and info.cores - info.shared)
    return GroupRoom(
        slots=topology.count_cores(usable) // cores,
        free=topology.count_cores(usable - others) // cores,
        held=held,
    )


def share_least_crowded(
    view: Survey, cores: int, options: PinOptions, scope: str, command: str
) -> Lease:
    """Share the slot of ``cores`` physical cores that the fewest live leases touch."""
    topology = view.topology
    room = topology.count_cores(topology.allowed - options.reserve) // cores
    slots = plan_slots(topology, room, cores_per_worker=cores, reserve=options.reserve).slots
    crowd = [sum(1 for info in view.leases if info.cores & slot) for slot in slots]
    return claim(least_crowded(slots, crowd), scope=scope, share=True, command=command)


def least_crowded(slots: Sequence[frozenset[int]], crowd: Sequence[int]) -> frozenset[int]:
    """The slot with the fewest holders (``crowd[i]`` for ``slots[i]``).

    Shared leases hold no lock, so sharers cannot see each other's choice: ties are broken
    by pid, so that sharers started together spread over the slots instead of piling up.
    """
    pick = min(range(len(slots)), key=lambda i: (crowd[i], (i - os.getpid()) % len(slots)))
    return slots[pick]
