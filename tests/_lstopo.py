"""Parse the hwloc ``lstopo`` console files next to each topology snapshot (the expected answer).

A console file is an indented tree (``Package L#0 (P#0 ...)`` over ``Core`` over ``PU``
objects) followed by summary lines, among which ``CPU kind #i efficiency e cpuset 0x...``.
Only what pinbackend's :class:`~pinbackend.core.topology.Topology` holds is extracted, as
sets of OS CPU numbers (PU P# values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_OBJECT = re.compile(r"(?P<indent> *)(?P<type>\S+)(?: L#\d+)?(?: \(P#(?P<os_index>\d+))?")
_SUMMARY = re.compile(r" *depth \d+:")
_KIND = re.compile(r"CPU kind #(?P<index>\d+) efficiency (?P<efficiency>-?\d+) cpuset (?P<set>\S+)")


@dataclass
class _Node:
    type: str
    os_index: int | None
    children: list[_Node] = field(default_factory=list)
    parent: _Node | None = None

    def pus(self) -> frozenset[int]:
        if self.type == "PU":
            return frozenset({self.os_index})
        return frozenset().union(*(child.pus() for child in self.children))

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Expected:
    """What lstopo reports for one snapshot, as OS CPU numbers (only allowed PUs appear)."""

    allowed: frozenset[int]
    packages: dict[int, frozenset[int]]
    numa_nodes: dict[int, frozenset[int]]
    cores: frozenset[frozenset[int]]
    l3_groups: frozenset[frozenset[int]]
    cpu_kinds: tuple[frozenset[int], ...]


def parse_hwloc_cpuset(text: str) -> frozenset[int]:
    """Parse hwloc's cpuset ``0xffffffff,0x0000000f`` (32-bit words, most significant first)."""
    value = 0
    for word in text.split(","):
        value = value << 32 | int(word, 16)
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)


def _tree(lines: list[str]) -> _Node:
    root = _Node("Root", None)
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in lines:
        match = _OBJECT.match(line)
        if not match or not line.strip():
            continue
        depth = len(match["indent"])
        while stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1]
        os_index = match["os_index"]
        node = _Node(match["type"], None if os_index is None else int(os_index), parent=parent)
        parent.children.append(node)
        stack.append((depth, node))
    return root


def _kinds(lines: list[str]) -> tuple[frozenset[int], ...]:
    kinds = []
    for line in lines:
        match = _KIND.match(line)
        if match:
            kinds.append((int(match["efficiency"]), parse_hwloc_cpuset(match["set"])))
    return tuple(cpus for _, cpus in sorted(kinds, key=lambda kind: kind[0]))


def parse_console(path: Path) -> Expected:
    """Parse one ``NAME.console`` file."""
    lines = path.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if _SUMMARY.match(line))
    nodes = list(_tree(lines[:end]).walk())

    def by_type(name: str) -> list[_Node]:
        return [node for node in nodes if node.type == name]

    return Expected(
        allowed=frozenset(node.os_index for node in by_type("PU")),
        packages={node.os_index: node.pus() for node in by_type("Package")},
        # A NUMA node is a memory child of the object whose CPUs are local to it.
        numa_nodes={node.os_index: node.parent.pus() for node in by_type("NUMANode")},
        cores=frozenset(node.pus() for node in by_type("Core")),
        l3_groups=frozenset(node.pus() for node in by_type("L3Cache")),
        cpu_kinds=_kinds(lines[end:]),
    )
