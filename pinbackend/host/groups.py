"""A group's own members on one host: a Dask cluster's workers, told apart from other jobs.

A starting member never waits for its own group: when the group's live members already
hold every slot of its size the host has, the policy applies at once
(:func:`pinbackend.host.policy.decide`, for a one-worker request).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from ..core.budget import cores_within
from .view import HostView

__all__ = ["GroupRoom", "group_room", "least_crowded"]


@dataclasses.dataclass(frozen=True)
class GroupRoom:
    """Slots of one size for a group's members on this host (a Dask cluster's workers).

    ``slots``: how many the host has (the job's CPUs, within the whole CPU budget);
    ``free``: how many other jobs leave to the group; ``held``: how many its members hold.
    ``full``: the members hold every slot the host has, so a new member waiting for one
    would wait for its own group.
    """

    slots: int
    free: int
    held: int

    @property
    def full(self) -> bool:
        return self.held >= self.slots


def group_cpus(view: HostView) -> frozenset[int]:
    """The host's CPUs for a group's slots: the job's CPUs within the whole CPU budget."""
    if view.budget is None or view.nested:
        return view.usable
    return cores_within(view.topology, view.usable, view.budget.cpus)


def group_room(view: HostView, cores: int) -> GroupRoom:
    """Count the slots of ``cores`` physical cores the group of ``view`` has here (pure).

    Member leases count once each, whatever their size, where they hold CPUs of this
    host's slots (a member pinned elsewhere, outside this process's CPUs, takes none of
    them); shared ones are not held.
    """
    topology, usable = view.topology, group_cpus(view)
    members = view.members
    return GroupRoom(
        slots=topology.count_cores(usable) // cores,
        free=topology.count_cores(usable - view.other_jobs) // cores,
        held=sum(1 for info in members if (info.cores - info.shared) & usable),
    )


def least_crowded(
    slots: Sequence[frozenset[int]], crowd: Sequence[int], me: int | None = None
) -> frozenset[int]:
    """The slot with the fewest holders (``crowd[i]`` for ``slots[i]``).

    Shared leases hold no lock, so sharers cannot see each other's choice: ties are broken
    by pid (``me``, default this process), so that sharers started together spread over
    the slots instead of piling up.
    """
    me = os.getpid() if me is None else me
    pick = min(range(len(slots)), key=lambda i: (crowd[i], (i - me) % len(slots)))
    return slots[pick]
