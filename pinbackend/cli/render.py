"""Readable pictures of topologies and plans for the terminal (one row per NUMA node)."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

from ..core.budget import Budget, cores_within
from ..core.cpuset import format_cpu_list
from ..core.topology import Topology

_LABELS = string.digits + string.ascii_letters


def worker_label(index: int) -> str:
    """One character naming worker ``index`` (0-9, a-z, A-Z, then ``*``)."""
    return _LABELS[index] if index < len(_LABELS) else "*"


def describe_topology(topology: Topology) -> str:
    """Multi-line description: packages > NUMA nodes > L3 groups > cores, allowed CPUs only."""
    view = topology.restrict(topology.allowed)
    lines = [
        f"Machine: {topology.source}",
        f"  online CPUs:  {format_cpu_list(topology.online)} ({len(topology.online)})",
        f"  allowed CPUs: {format_cpu_list(topology.allowed)} ({len(topology.allowed)}), "
        f"{len(view.cores)} physical cores",
        "  CPU quota:    " + _quota(topology.cpu_quota),
    ]
    for package_id, package in view.packages.items():
        lines.append(f"  package {package_id}: CPUs {format_cpu_list(package)}")
        for node_id, node in view.numa_nodes.items():
            if not node & package:
                continue
            lines.append(f"    NUMA node {node_id}: CPUs {format_cpu_list(node & package)}")
            groups = [g & node & package for g in view.l3_groups if g & node & package]
            for group in groups or [node & package]:
                label = "L3" if view.l3_groups else "cores"
                cores = [c for c in view.cores if c <= group]
                lines.append(
                    f"      {label} {format_cpu_list(group)}: "
                    + " ".join(f"[{format_cpu_list(c)}]" for c in cores)
                )
    if view.cpu_kinds:
        names = _kind_names(len(view.cpu_kinds))
        for name, kind in zip(names, view.cpu_kinds, strict=True):
            lines.append(f"  CPU kind {name}: CPUs {format_cpu_list(kind)}")
    lines.extend(f"  note: {note}" for note in topology.notes)
    return "\n".join(lines)


def budget_cores(topology: Topology, budget: Budget) -> int:
    """Physical cores of the allowed CPUs that a plan within ``budget`` uses."""
    return topology.count_cores(cores_within(topology, topology.allowed, budget.cpus))


def describe_budget(topology: Topology, budget: Budget) -> str:
    """The CPU budget and each limit: its kind, value and where it came from."""
    cores = budget_cores(topology, budget)
    lines = [
        f"CPU budget: {budget.cpus} CPU{'s' * (budget.cpus != 1)}, "
        f"{cores} physical core{'s' * (cores != 1)} (the smallest of these limits):"
    ]
    binding = budget.binding
    for limit in budget.limits:
        mark = "  <- binds" if limit in binding and len(binding) < len(budget.limits) else ""
        unit = "CPU " if limit.value == 1 else "CPUs"
        lines.append(f"  {limit.kind:<9} {limit.value:>7g} {unit}  {limit.source}{mark}")
    lines.extend(f"  note: {note}" for note in budget.notes if note not in topology.notes)
    return "\n".join(lines)


def _quota(quota: float | None) -> str:
    if quota is None:
        return "none"
    return f"{quota:g} CPU{'s' * (quota != 1)} (cgroup; see the CPU budget)"


def _kind_names(count: int) -> list[str]:
    if count == 2:
        return ["efficiency (E)", "performance (P)"]
    return [f"#{i} (efficiency rank {i})" for i in range(count)]


#: What each mark character in a core map means.
MARK_MEANINGS = {
    "r": "reserved",
    "x": "held by another job",
    "-": "outside --cores",
    "b": "outside the CPU budget",
}


def describe_plan(
    topology: Topology,
    slots: Sequence[frozenset[int]],
    *,
    marks: Mapping[int, str] | None = None,
) -> str:
    """A table of slots and a core map: one row per NUMA node, one character per core.

    In the map each physical core shows the worker that owns it, ``.`` when unused, or the
    character given for its CPU in ``marks`` (one of :data:`MARK_MEANINGS`).
    """
    marks = marks or {}
    owner = {cpu: i for i, slot in enumerate(slots) for cpu in slot}
    lines = ["worker  cores  CPUs"]
    for i, slot in enumerate(slots):
        n_cores = topology.count_cores(slot)
        lines.append(f"{worker_label(i):>6}  {n_cores:>5}  {format_cpu_list(slot)}")
    lines.append("")
    meanings = [
        f"{mark} = {MARK_MEANINGS[mark]}" for mark in MARK_MEANINGS if mark in marks.values()
    ]
    lines.append(
        "core map (one character per physical core; "
        + ", ".join(["digit = worker", ". = unused", *meanings])
        + "):"
    )
    for node_id, node in topology.numa_nodes.items():
        row = []
        for core in (c for c in topology.cores if c <= node):
            if not core & topology.allowed:
                continue
            owners = {owner[cpu] for cpu in core if cpu in owner}
            if owners:
                row.append(worker_label(min(owners)))
            else:
                row.append(next((marks[cpu] for cpu in sorted(core) if cpu in marks), "."))
        if row:
            lines.append(f"  NUMA node {node_id:<3} {''.join(row)}")
    return "\n".join(lines)
