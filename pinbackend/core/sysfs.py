"""Read a Linux machine's topology from its ``/sys`` and ``/proc`` files, live or from a snapshot.

One small reader per source (online CPUs, packages, cores, NUMA nodes, L3 caches, CPU kinds,
cgroup cpuset and quota); :func:`read_topology` combines them. Readers only read files under
the root they are given; the live affinity mask comes from the caller (``allowed=``, see
:func:`pinbackend.host.machine.read_topology`). A missing or corrupt file makes its reader
fall back to a coarser answer (one package, one core per CPU, one NUMA node) and leave a short
note in ``Topology.notes``; it never raises. The kernel quirks handled follow hwloc's
``hwloc/topology-linux.c``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

from ._files import Files, to_int
from .cgroup import cgroup_cpuset, cpu_quota
from .topology import Topology, TopologyError

__all__ = ["is_live_root", "read_topology"]

_CPU = "sys/devices/system/cpu"
_NODE = "sys/devices/system/node"
# Intel hybrid PMUs, most efficient first (hwloc ranks IntelLowPower < IntelAtom < IntelCore).
_PMU_KINDS = ("cpu_lowpower", "cpu_atom", "cpu_core")


def _group(cpus: Iterable[int], key: Callable[[int], Hashable | None]) -> dict | None:
    """Group CPUs by ``key``; None if the key is unknown (None) for any CPU."""
    groups: dict = {}
    for cpu in sorted(cpus):
        value = key(cpu)
        if value is None:
            return None
        groups.setdefault(value, set()).add(cpu)
    return {value: frozenset(members) for value, members in groups.items()}


def _topo(cpu: int, name: str) -> str:
    return f"{_CPU}/cpu{cpu}/topology/{name}"


def _sibling_set(files: Files, online: frozenset[int], cpu: int, *names: str) -> frozenset | None:
    """The first readable of the ``NAME_list``/``NAME`` topology files of ``cpu``, online part."""
    rels = [_topo(cpu, f) for name in names for f in (f"{name}_list", name)]
    found = files.cpus(*rels)
    return None if found is None else found & online


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
    """Online CPUs: the kernel's online list, else the cpuN folders, else /proc/cpuinfo."""
    cpus = files.cpus(f"{_CPU}/online")
    if cpus is None:
        folders = frozenset(files.numbered(_CPU, "cpu"))
        cpus, source = (folders, "cpuN folders") if folders else (frozenset(cpuinfo), "cpuinfo")
        if cpus:
            files.note(f"no {_CPU}/online: online CPUs from {source}")
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


def _packages(files: Files, online: frozenset[int], cpuinfo: dict) -> dict[int, frozenset]:
    """Package id -> CPUs, from physical_package_id, else package_cpus sets, else cpuinfo."""

    def package_id(cpu: int) -> int | None:
        number = files.number(_topo(cpu, "physical_package_id"))
        return number if number is not None and number >= 0 else None  # -1: unknown

    packages = _group(online, package_id)
    if packages is None:
        by_set = _group(
            online, lambda c: _sibling_set(files, online, c, "package_cpus", "core_siblings")
        )
        if by_set is None:
            packages = _group(online, lambda c: to_int(cpuinfo.get(c, {}).get("physical id")))
        else:
            packages = dict(enumerate(by_set.values()))
        if packages is not None:
            files.note("no physical_package_id: package ids guessed")
    if packages is None:
        files.note("no package information: one package assumed")
        return {0: online}
    return packages


def _cores(files: Files, online: frozenset[int], cpuinfo: dict) -> tuple[frozenset, ...]:
    """Physical cores as sets of SMT siblings, from sysfs, else /proc/cpuinfo core ids."""

    def sysfs_key(cpu: int) -> Hashable | None:
        siblings = _sibling_set(files, online, cpu, "core_cpus", "thread_siblings")
        # AMD Bulldozer-style modules list two cores as thread siblings but give each its own
        # core_id; hwloc's topology-linux.c then makes one core per thread, and so do we.
        return None if siblings is None else (siblings, files.number(_topo(cpu, "core_id")))

    def cpuinfo_key(cpu: int) -> Hashable | None:
        fields = cpuinfo.get(cpu, {})
        core = (to_int(fields.get("physical id")), to_int(fields.get("core id")))
        return None if None in core else core

    cores = _group(online, sysfs_key)
    if cores is None:
        cores = _group(online, cpuinfo_key)
        if cores is not None:
            files.note("no sysfs core siblings: cores from /proc/cpuinfo core ids")
    if cores is None:
        files.note("no core information: one core per CPU assumed")
        return tuple(frozenset({cpu}) for cpu in sorted(online))
    return tuple(cores.values())


def _numa_nodes(files: Files, online: frozenset[int]) -> dict[int, frozenset]:
    """NUMA node -> CPUs from the nodeN folders; one node holding every CPU when unusable."""
    nodes = {}
    for node in files.numbered(_NODE, "node"):
        folder = f"{_NODE}/node{node}"
        cpus = files.cpus(f"{folder}/cpulist", f"{folder}/cpumap")
        if cpus is not None:
            nodes[node] = cpus & online
    covered = [cpu for cpus in nodes.values() for cpu in cpus]
    if len(covered) == len(online) and set(covered) == online:
        return nodes
    files.note("no usable NUMA node information: one node assumed")
    return {0: online}


def _l3_groups(files: Files, online: frozenset[int]) -> tuple[frozenset, ...]:
    """The sets of CPUs that share one level-3 cache (empty when no cache reports level 3)."""
    groups = set()
    for cpu in sorted(online):
        cache = f"{_CPU}/cpu{cpu}/cache"
        for index in files.numbered(cache, "index"):
            folder = f"{cache}/index{index}"
            if files.number(f"{folder}/level") != 3:
                continue
            shared = files.cpus(f"{folder}/shared_cpu_list", f"{folder}/shared_cpu_map")
            if shared is not None:
                groups.add((shared & online) | {cpu})
    return tuple(groups)


def _frequencies(files: Files, online: frozenset[int]) -> dict[int, tuple[int, int]]:
    """(base, max) frequency in MHz per CPU, 0 where unknown, Turbo Boost Max 3.0 smoothed."""
    freqs = {}
    for cpu in online:
        folder = f"{_CPU}/cpu{cpu}/cpufreq"
        base = files.number(f"{folder}/base_frequency") or 0
        freqs[cpu] = [base, files.number(f"{folder}/cpuinfo_max_freq") or 0]
    # Turbo Boost Max 3.0 gives a few cores of one kind a higher max frequency. Like hwloc
    # (hwloc_linux_cpukinds_adjust_maxfreqs), when every max comes with a base frequency,
    # CPUs of one base frequency whose max differ by less than 10% get their lowest max.
    if all(base for base, top in freqs.values() if top):
        for base in {base for base, _ in freqs.values()}:
            same = [freq for freq in freqs.values() if freq[0] == base]
            low, high = min(f[1] for f in same), max(f[1] for f in same)
            if low and (high - low) * 10 < low:
                for freq in same:
                    freq[1] = low
    return {cpu: (base // 1000, top // 1000) for cpu, (base, top) in freqs.items()}


def _kinds_unreliable(cpuinfo: dict) -> bool:
    """True on AMD CPUs before Zen 5, whose per-core max frequencies vary but are one kind."""
    first = cpuinfo[min(cpuinfo)] if cpuinfo else {}
    family = to_int(first.get("cpu family"))
    # hwloc skips CPU kinds there too (topology-linux.c: "ignoring on pre-Zen5 AMD CPUs").
    return first.get("vendor_id") == "AuthenticAMD" and family is not None and family < 0x1A


def _cpu_kinds(files: Files, online: frozenset[int], cpuinfo: dict) -> tuple[frozenset, ...]:
    """CPU kinds, most efficient first: by cpu_capacity, Intel PMU type, then frequency."""
    if _kinds_unreliable(cpuinfo):
        return ()
    pmu_rank = {}
    for rank, pmu in enumerate(_PMU_KINDS, start=1):
        for cpu in files.cpus(f"sys/devices/{pmu}/cpus") or ():
            pmu_rank[cpu] = rank
    freqs = _frequencies(files, online)
    # Lower capacity, then a lower PMU type, then a lower base (then max) frequency means
    # more efficient: hwloc's ranking order (cpukinds.c) for the sources Linux offers.
    kinds = _group(
        online,
        lambda cpu: (
            files.number(f"{_CPU}/cpu{cpu}/cpu_capacity") or 0,
            pmu_rank.get(cpu, 0),
            *freqs[cpu],
        ),
    )
    if not kinds or set(kinds) == {(0, 0, 0, 0)}:
        return ()
    return tuple(kinds[key] for key in sorted(kinds))


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
    return Topology(
        online=online,
        allowed=_allowed_cpus(files, online, allowed),
        packages=_packages(files, online, cpuinfo),
        numa_nodes=_numa_nodes(files, online),
        cores=_cores(files, online, cpuinfo),
        l3_groups=_l3_groups(files, online),
        cpu_kinds=_cpu_kinds(files, online, cpuinfo),
        cpu_quota=cpu_quota(files),
        source=source,
        notes=tuple(files.notes),  # arguments run in order: every reader above has run
    )
