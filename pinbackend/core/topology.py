"""The machine as pinbackend sees it: which CPUs exist, how they group, which we may use.

A :class:`Topology` is an immutable value, built by :func:`pinbackend.core.sysfs.read_topology`
from Linux's ``/sys`` and ``/proc`` files (or a snapshot of them), or by hand in tests.
All groupings are sets of OS CPU numbers (the numbers ``taskset`` and ``sched_setaffinity`` use).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .cpuset import format_cpu_list

__all__ = ["UNKNOWN_ID", "Topology", "TopologyError"]

#: Key of the CPUs that belong to no package or no NUMA node hwloc would accept (a node taken
#: offline, a package whose sysfs set conflicts with its neighbours'): the kernel's own id for
#: "unknown" (``physical_package_id`` -1, ``NUMA_NO_NODE``).
UNKNOWN_ID = -1


class TopologyError(ValueError):
    """The files under a root folder do not describe a usable machine."""


def _frozen_groups(groups: Iterable[Iterable[int]]) -> tuple[frozenset[int], ...]:
    return tuple(sorted((frozenset(g) for g in groups if g), key=min))


@dataclass(frozen=True)
class Topology:
    """CPUs of one host and their grouping (packages, NUMA nodes, cores, caches, kinds).

    ``online`` holds every online CPU; ``allowed`` those this process may run on (affinity
    mask or cgroup cpuset), always a subset of ``online``. ``packages`` and ``numa_nodes`` map
    ids to CPUs and each hold every online CPU once: CPUs in no package or node sit under
    :data:`UNKNOWN_ID`. ``cores`` lists each physical core as the set of its SMT sibling CPUs.
    ``l3_groups`` are the CPUs sharing one last-level cache (empty when the machine reports
    none; CPUs of no L3 are in no group). ``cpu_kinds`` are hybrid CPU kinds ordered from the
    most efficient to the most performant (E-cores before P-cores, hwloc's order); empty when
    the kernel does not tell them apart. ``cpu_quota`` is the cgroup CPU quota in cores' worth
    of time (``None`` when unlimited): it limits how much time we get, not which CPUs.
    """

    online: frozenset[int]
    allowed: frozenset[int]
    packages: Mapping[int, frozenset[int]]
    numa_nodes: Mapping[int, frozenset[int]]
    cores: tuple[frozenset[int], ...]
    l3_groups: tuple[frozenset[int], ...] = ()
    cpu_kinds: tuple[frozenset[int], ...] = ()
    cpu_quota: float | None = None
    source: str = "synthetic"
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "online", frozenset(self.online))
        object.__setattr__(self, "allowed", frozenset(self.allowed))
        object.__setattr__(
            self, "packages", {k: frozenset(v) for k, v in sorted(self.packages.items()) if v}
        )
        object.__setattr__(
            self, "numa_nodes", {k: frozenset(v) for k, v in sorted(self.numa_nodes.items()) if v}
        )
        object.__setattr__(self, "cores", _frozen_groups(self.cores))
        object.__setattr__(self, "l3_groups", _frozen_groups(self.l3_groups))
        object.__setattr__(self, "cpu_kinds", tuple(frozenset(k) for k in self.cpu_kinds if k))
        self._check()

    def _check(self) -> None:
        if not self.online:
            raise TopologyError(f"topology from {self.source} has no online CPU")
        if not self.allowed <= self.online:
            stray = format_cpu_list(self.allowed - self.online)
            raise TopologyError(f"topology from {self.source}: allowed CPUs {stray} are not online")
        for name in ("packages", "numa_nodes", "cores"):
            groups = getattr(self, name)
            values = groups.values() if isinstance(groups, Mapping) else groups
            seen: set[int] = set()
            for group in values:
                if group & seen:
                    raise TopologyError(
                        f"topology from {self.source}: {name} overlap on CPUs "
                        f"{format_cpu_list(group & seen)}"
                    )
                seen |= group
            if seen != self.online:
                raise TopologyError(
                    f"topology from {self.source}: {name} cover CPUs {format_cpu_list(seen)} "
                    f"but the online CPUs are {format_cpu_list(self.online)}"
                )

    def restrict(self, cpus: Iterable[int]) -> Topology:
        """Return this topology seen through ``cpus``: every group cut down to those CPUs.

        Groups left empty disappear; ``online`` and ``allowed`` become ``cpus`` (which must be
        online CPUs). The planner works on such a view of the usable CPUs.
        """
        keep = frozenset(cpus)
        if not keep:
            raise TopologyError("cannot restrict a topology to an empty set of CPUs")
        if not keep <= self.online:
            raise TopologyError(
                f"cannot restrict the topology to CPUs {format_cpu_list(keep - self.online)}: "
                f"not online (online: {format_cpu_list(self.online)})"
            )
        return replace(
            self,
            online=keep,
            allowed=keep,
            packages={k: v & keep for k, v in self.packages.items()},
            numa_nodes={k: v & keep for k, v in self.numa_nodes.items()},
            cores=tuple(c & keep for c in self.cores),
            l3_groups=tuple(g & keep for g in self.l3_groups),
            cpu_kinds=tuple(k & keep for k in self.cpu_kinds),
        )

    def count_cores(self, cpus: Iterable[int]) -> int:
        """Return how many physical cores have at least one CPU in ``cpus``."""
        cpus = frozenset(cpus)
        return sum(1 for core in self.cores if core & cpus)

    def core_of(self, cpu: int) -> frozenset[int]:
        """Return the SMT siblings of ``cpu`` (the physical core it belongs to)."""
        for core in self.cores:
            if cpu in core:
                return core
        raise KeyError(cpu)

    def to_dict(self) -> dict:
        """Describe the allowed part of the machine with plain lists (the ``info --json`` form)."""
        view = self.restrict(self.allowed) if self.allowed else self
        return {
            "source": self.source,
            "online": sorted(self.online),
            "allowed": sorted(self.allowed),
            "packages": [sorted(v) for v in view.packages.values()],
            "package_ids": list(view.packages),
            "numa_nodes": [sorted(v) for v in view.numa_nodes.values()],
            "numa_node_ids": list(view.numa_nodes),
            "cores": [sorted(c) for c in view.cores],
            "l3_groups": [sorted(g) for g in view.l3_groups],
            "cpu_kinds": [sorted(k) for k in view.cpu_kinds],
            "cpu_quota": self.cpu_quota,
            "notes": list(self.notes),
        }

    @classmethod
    def uniform(
        cls,
        packages: int = 1,
        numa_per_package: int = 1,
        l3_per_numa: int = 1,
        cores_per_l3: int = 2,
        threads_per_core: int = 1,
        allowed: Iterable[int] | None = None,
    ) -> Topology:
        """Build a regular synthetic machine (for tests, docs and ``plan --synthetic``).

        CPUs are numbered like Linux on x86: first thread of every core, then second threads.
        """
        n_cores = packages * numa_per_package * l3_per_numa * cores_per_l3
        core_cpus = [
            frozenset(core + thread * n_cores for thread in range(threads_per_core))
            for core in range(n_cores)
        ]
        per_package = n_cores // packages
        per_numa = per_package // numa_per_package

        def union(start: int, count: int) -> frozenset[int]:
            return frozenset().union(*core_cpus[start : start + count])

        online = frozenset(range(n_cores * threads_per_core))
        return cls(
            online=online,
            allowed=online if allowed is None else frozenset(allowed),
            packages={p: union(p * per_package, per_package) for p in range(packages)},
            numa_nodes={
                n: union(n * per_numa, per_numa) for n in range(packages * numa_per_package)
            },
            cores=tuple(core_cpus),
            l3_groups=tuple(
                union(g * cores_per_l3, cores_per_l3)
                for g in range(packages * numa_per_package * l3_per_numa)
            ),
            source=(
                f"synthetic {packages}p x {numa_per_package}n x {l3_per_numa}l3 x "
                f"{cores_per_l3}c x {threads_per_core}t"
            ),
        )
