"""Read a Linux machine's topology from its ``/sys`` and ``/proc`` files, live or from a snapshot.

One small reader per source (online CPUs, the CPU objects of ``sys/devices/system/cpu``, NUMA
nodes, CPU kinds, cgroup cpuset and quota); :func:`read_topology` combines them. Readers only
read files under the root they are given; the live affinity mask comes from the caller
(``allowed=``, see :func:`pinbackend.host.machine.read_topology`).

The CPU objects follow hwloc's ``hwloc/topology-linux.c`` (``look_sysfscpu``,
``look_sysfsnode``), and ``tests/test_topology_snapshots.py`` checks the result against
``lstopo`` on hwloc's own snapshots:

- the bitmap files (``core_cpus``/``thread_siblings``, ``package_cpus``/``core_siblings``,
  ``shared_cpu_map``, a node's ``cpumap``) are read, the ``*_list`` files only when no bitmap
  is readable: hwloc trusts the bitmaps, and snapshots exist where the two disagree;
- each core, package or cache is made from the set its *first* CPU reports, and a set that
  partially overlaps one already made is dropped, so groups always nest and never overlap;
- a NUMA node whose CPUs overlap an earlier node's is dropped; CPUs that no package or node
  holds are kept under :data:`~pinbackend.core.topology.UNKNOWN_ID`, where lstopo shows them
  outside any package or node.

A missing or corrupt file makes its reader fall back to a coarser answer (one package, one
core per CPU, one NUMA node) and leave a short note in ``Topology.notes``; it never raises.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from ._files import Files, to_int
from .cgroup import cgroup_cpuset, cpu_quota
from .cpukinds import cpu_kinds
from .cpuset import format_cpu_list, group_by
from .topology import UNKNOWN_ID, Topology, TopologyError

__all__ = ["is_live_root", "read_topology"]

_CPU = "sys/devices/system/cpu"
_NODE = "sys/devices/system/node"
# Cache levels hwloc knows (hwloc_cache_type_by_depth_type): others are skipped.
_MAX_LEVEL = {"Instruction": 3}
_MAX_DATA_LEVEL = 5


def _topo(cpu: int, name: str) -> str:
    return f"{_CPU}/cpu{cpu}/topology/{name}"


def _cpu_set(files: Files, cpu: int, *names: str) -> frozenset[int] | None:
    """The first readable bitmap ``NAME`` of ``cpu``'s topology, else list ``NAME_list``."""
    return files.cpus(
        *(_topo(cpu, name) for name in names), *(_topo(cpu, f"{n}_list") for n in names)
    )


def _first(cpus: frozenset[int]) -> int:
    """The lowest CPU of a set, -1 for the empty set (hwloc_bitmap_first)."""
    return min(cpus, default=-1)


def _cpuinfo(files: Files) -> dict[int, dict[str, str]]:
    """The ``key: value`` fields of each ``processor`` block of /proc/cpuinfo."""
    processors: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in (files.text("proc/cpuinfo") or "").splitlines():
        key, colon, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            number = to_int(value)
            current = None if number is None else processors.setdefault(number, {})
        elif current is not None and colon:
            current[key] = value
    return processors


def _online_cpus(files: Files, cpuinfo: dict, fallback: frozenset[int]) -> frozenset[int]:
    """Online CPUs as hwloc counts them: cpuN folders that are online and have a topology.

    Without cpuN folders: the kernel's online list, else /proc/cpuinfo, else ``fallback``.
    """
    listed = files.cpus(f"{_CPU}/online")
    folders = frozenset(files.numbered(_CPU, "cpu"))
    if folders:
        if listed is None:
            files.note(f"no {_CPU}/online: online CPUs from cpuN folders")
        cpus = folders if listed is None else folders & listed
        # hwloc skips a CPU whose kernel exports no topology folder (when others have one).
        with_topology = frozenset(c for c in cpus if files.is_dir(f"{_CPU}/cpu{c}/topology"))
        if with_topology and with_topology != cpus:
            files.note(
                f"CPUs {format_cpu_list(cpus - with_topology)} have no topology folder: "
                f"left out, as hwloc does"
            )
            cpus = with_topology
    elif listed is not None:
        cpus = listed
    else:
        cpus = frozenset(cpuinfo)
        if cpus:
            files.note(f"no {_CPU}/online: online CPUs from cpuinfo")
    if not cpus and fallback:
        cpus = fallback
        files.note("no CPU files: online CPUs guessed from the allowed CPUs")
    # Per-CPU "online" files can mark a CPU offline that a stale list still names.
    online = frozenset(c for c in cpus if files.number(f"{_CPU}/cpu{c}/online") != 0)
    if not online:
        raise TopologyError(
            f"found no online CPU under {files.root}: expected {_CPU}/online, {_CPU}/cpuN "
            f"folders or proc/cpuinfo; pass the root of a Linux machine's files or '/'"
        )
    return online


class _Nested:
    """CPU sets accepted so far; one that partially overlaps an accepted set is refused.

    hwloc inserts every object into one tree by its CPU set and drops an object whose set
    intersects another's without either containing the other ("intersection without
    inclusion", topology.c): caches, packages and cores therefore always nest.
    """

    def __init__(self) -> None:
        self._masks: set[int] = set()

    def add(self, cpus: frozenset[int]) -> bool:
        """Accept ``cpus`` unless it is empty or partially overlaps an accepted set."""
        mask = sum(1 << cpu for cpu in cpus)
        if not mask:
            return False
        for other in self._masks:
            common = mask & other
            if common and common != mask and common != other:
                return False
        self._masks.add(mask)
        return True


@dataclass
class _CpuObjects:
    """The packages (id or None, CPUs), cores and L3 caches hwloc would make."""

    packages: list[tuple[int | None, frozenset[int]]] = field(default_factory=list)
    cores: list[frozenset[int]] = field(default_factory=list)
    l3_groups: dict[frozenset[int], None] = field(default_factory=dict)  # ordered, no repeats


def _amd_compute_units(cpuinfo: dict) -> bool:
    """AMD families 15h and 16h (Bulldozer and kin) pair two cores in a compute unit."""
    first = next(iter(cpuinfo.values()), {})
    return first.get("vendor_id") == "AuthenticAMD" and first.get("cpu family") in ("21", "22")


def _own_core_ids(files: Files, cpu: int, core: frozenset[int]) -> bool:
    """Whether ``cpu`` and its first sibling report different core ids (compute unit cores)."""
    sibling = min(core - {cpu})
    return files.number(_topo(cpu, "core_id")) != files.number(_topo(sibling, "core_id"))


def _package_id(files: Files, cpu: int) -> int | None:
    number = files.number(_topo(cpu, "physical_package_id"))
    return number if number is not None and number >= 0 else None  # -1: unknown


def _cpu_objects(files: Files, online: frozenset[int], cpuinfo: dict) -> _CpuObjects:
    """Walk the CPUs in order as hwloc's look_sysfscpu does and keep the objects it would keep."""
    found = _CpuObjects()
    nested = _Nested()
    # AMD compute units list two cores as thread siblings but give each its own core_id:
    # hwloc then makes one core per thread. None: not decided yet (no CPU with siblings seen).
    thread_cores: bool | None = None if _amd_compute_units(cpuinfo) else False
    for cpu in sorted(online):
        # Only the first CPU of a core looks at its cluster, die and package (and only the
        # first of a cluster, or of a die, looks further up).
        below_first = below_first_cluster = below_first_die = False
        core = _cpu_set(files, cpu, "core_cpus", "thread_siblings")
        if core is not None:
            core &= online
            if len(core) > 1 and thread_cores is None:
                thread_cores = _own_core_ids(files, cpu, core)
            if _first(core) != cpu:
                below_first = below_first_cluster = below_first_die = True
            if not below_first or thread_cores is not False:
                core = core if thread_cores is False else frozenset({cpu})
                if nested.add(core):
                    found.cores.append(core)
        cluster = die = None
        if not below_first:
            cluster = _cpu_set(files, cpu, "cluster_cpus")
            if cluster is not None:
                cluster &= online
                if len(cluster) == 1:
                    cluster = None
                elif _first(cluster) != cpu:
                    cluster = None
                    below_first_cluster = below_first_die = True
        if not below_first_cluster:
            die = _cpu_set(files, cpu, "die_cpus")
            if die is not None:
                die &= online
                if len(die) == 1:
                    die = None
                elif _first(die) != cpu:
                    die = None
                    below_first_die = True
                if die is not None and cluster == die:
                    cluster = None
        if not below_first_die:
            package = _cpu_set(files, cpu, "package_cpus", "core_siblings")
            if package is not None:
                package &= online
                if cluster == package:
                    cluster = None
                if _first(package) == cpu and nested.add(package):
                    found.packages.append((_package_id(files, cpu), package))
        for group in (cluster, die, *_s390_groups(files, online, cpu)):
            if group is not None:
                nested.add(group)
        _caches(files, online, cpu, nested, found)
    return found


def _s390_groups(files: Files, online: frozenset[int], cpu: int) -> list[frozenset[int]]:
    """The s390 book and drawer ``cpu`` is first of (hwloc makes them groups)."""
    groups = []
    for name in ("book", "drawer"):
        siblings = _cpu_set(files, cpu, f"{name}_siblings")
        if siblings is None:
            break  # hwloc looks at drawers only where books exist
        siblings &= online
        if _first(siblings) == cpu and files.number(_topo(cpu, f"{name}_id")) is not None:
            groups.append(siblings)
    return groups


def _caches(
    files: Files, online: frozenset[int], cpu: int, nested: _Nested, found: _CpuObjects
) -> None:
    """Add the caches ``cpu`` is first of (hwloc looks at index0-index9), keep the L3s."""
    for index in range(10):
        folder = f"{_CPU}/cpu{cpu}/cache/index{index}"
        shared = files.cpus(f"{folder}/shared_cpu_map", f"{folder}/shared_cpu_list")
        if shared is None:
            continue
        if not shared:
            # ia64 reports empty maps for some caches: hwloc takes the core's CPUs instead.
            shared = _cpu_set(files, cpu, "core_cpus", "thread_siblings") or shared
        shared &= online
        if _first(shared) != cpu:
            continue
        level = files.number(f"{folder}/level")
        kind = (files.text(f"{folder}/type") or "Unified").split()[0]
        if level is None or not 1 <= level <= _MAX_LEVEL.get(kind, _MAX_DATA_LEVEL):
            continue
        if nested.add(shared) and level == 3 and kind != "Instruction":
            found.l3_groups[shared] = None


def _unplaced(files: Files, groups: dict[int, frozenset], online: frozenset, what: str) -> dict:
    """``groups`` plus, under UNKNOWN_ID, the online CPUs none of them holds."""
    rest = online - frozenset().union(*groups.values())
    if rest:
        files.note(
            f"CPUs {format_cpu_list(rest)} are in no {what} (lstopo shows them outside any): "
            f"{what} {UNKNOWN_ID}"
        )
        return {**groups, UNKNOWN_ID: rest}
    return groups


def _packages(
    files: Files, found: _CpuObjects, online: frozenset[int], cpuinfo: dict
) -> dict[int, frozenset]:
    """Package id -> CPUs from the package sets; ids renumbered when unknown or repeated."""
    if not found.packages:
        packages = group_by(online, lambda c: to_int(cpuinfo.get(c, {}).get("physical id")))
        if packages is not None:
            files.note("no sysfs package sets: packages from /proc/cpuinfo physical ids")
            return packages
        files.note("no package information: one package assumed")
        return {0: online}
    ordered = sorted(found.packages, key=lambda package: min(package[1]))
    ids = [package_id for package_id, _ in ordered]
    if None in ids or len(set(ids)) < len(ids):
        # s390 and POWER say -1, old ia64 repeats ids across sockets: lstopo then shows
        # several packages with no or the same P#. Ids must be unique here.
        files.note("physical_package_id unknown or repeated: packages numbered from 0 by first CPU")
        ids = list(range(len(ordered)))
    return _unplaced(
        files, dict(zip(ids, (cpus for _, cpus in ordered), strict=True)), online, "package"
    )


def _cores(
    files: Files, found: _CpuObjects, online: frozenset[int], cpuinfo: dict
) -> tuple[frozenset, ...]:
    """Physical cores as sets of SMT siblings, from sysfs, else /proc/cpuinfo core ids."""

    def cpuinfo_key(cpu: int) -> Hashable | None:
        fields = cpuinfo.get(cpu, {})
        core = (to_int(fields.get("physical id")), to_int(fields.get("core id")))
        return None if None in core else core

    if not found.cores:
        cores = group_by(online, cpuinfo_key)
        if cores is not None:
            files.note("no sysfs core siblings: cores from /proc/cpuinfo core ids")
            return tuple(cores.values())
        files.note("no core information: one core per CPU assumed")
        return tuple(frozenset({cpu}) for cpu in sorted(online))
    rest = online - frozenset().union(*found.cores)
    if rest:
        files.note(f"no core information for CPUs {format_cpu_list(rest)}: one core each")
    return (*found.cores, *(frozenset({cpu}) for cpu in sorted(rest)))


def _numa_nodes(files: Files, online: frozenset[int]) -> dict[int, frozenset]:
    """NUMA node -> CPUs from each online node's cpumap; one node holding every CPU if none."""
    listed = files.cpus(f"{_NODE}/online")
    ids = sorted(listed) if listed is not None else files.numbered(_NODE, "node")
    nodes: dict[int, frozenset] = {}
    taken: frozenset[int] = frozenset()
    for node in ids:
        folder = f"{_NODE}/node{node}"
        cpus = files.cpus(f"{folder}/cpumap", f"{folder}/cpulist")
        if cpus is None:
            continue
        if cpus & taken:
            files.note(f"NUMA node {node} overlaps an earlier node: ignored, as hwloc does")
            continue
        taken |= cpus
        if cpus & online:
            nodes[node] = cpus & online
    if not nodes:
        files.note("no usable NUMA node information: one node assumed")
        return {0: online}
    return _unplaced(files, nodes, online, "NUMA node")


def _allowed_cpus(
    files: Files, online: frozenset[int], allowed: frozenset[int] | None
) -> frozenset[int]:
    """CPUs this process may use: ``allowed`` when given, else the snapshot's cgroup cpuset."""
    if allowed is not None:
        allowed = allowed & online
    else:
        cpuset = cgroup_cpuset(files)
        if cpuset is None:
            files.note("no cgroup cpuset found: every online CPU assumed allowed")
        allowed = online if cpuset is None else cpuset & online
    if not allowed:
        files.note("allowed CPUs are all offline: every online CPU assumed allowed")
        return online
    return allowed


def is_live_root(root: str | os.PathLike) -> bool:
    """Whether ``root`` is this machine's own ``/``."""
    return os.path.realpath(os.fspath(root)) == os.path.realpath(os.sep)


def _check_root(root: str | os.PathLike) -> Path:
    """Return ``root`` as a folder that holds ``sys/`` or ``proc/``."""
    path = Path(os.fspath(root))
    if is_live_root(path):
        return path
    if not path.is_dir() or not ((path / "sys").is_dir() or (path / "proc").is_dir()):
        raise TopologyError(
            f"cannot read a topology from {os.fspath(root)!r}: it is not a folder holding sys/ "
            f"or proc/; pass '/' for this machine or the folder of an unpacked snapshot"
        )
    return path


def read_topology(
    root: str | os.PathLike, *, allowed: frozenset[int] | None = None, source: str | None = None
) -> Topology:
    """Read the CPU topology of the Linux machine whose ``/sys`` and ``/proc`` are under ``root``.

    ``allowed`` is the set of CPUs this process may use (the live affinity mask, given by
    :mod:`pinbackend.host`); without it, the snapshot's cgroup cpuset says. Raises
    :class:`TopologyError` when ``root`` is not such a folder or names no CPU; missing or
    corrupt files only give a coarser topology, with notes.
    """
    path = _check_root(root)
    return _read(path, allowed=allowed, source=source or os.fspath(root))


def _read(path: Path, *, allowed: frozenset[int] | None, source: str) -> Topology:
    files = Files(path)
    cpuinfo = _cpuinfo(files)
    online = _online_cpus(files, cpuinfo, allowed or frozenset())
    found = _cpu_objects(files, online, cpuinfo)
    return Topology(
        online=online,
        allowed=_allowed_cpus(files, online, allowed),
        packages=_packages(files, found, online, cpuinfo),
        numa_nodes=_numa_nodes(files, online),
        cores=_cores(files, found, online, cpuinfo),
        l3_groups=tuple(found.l3_groups),
        cpu_kinds=cpu_kinds(files, online, cpuinfo),
        cpu_quota=cpu_quota(files),
        source=source,
        notes=tuple(files.notes),  # arguments run in order: every reader above has run
    )
