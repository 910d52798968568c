"""Parse hwloc's Linux test files: ``NAME.test`` (which snapshot, which lstopo options) and the
``NAME.console`` lstopo printed for it (the expected answer).

A console file is an indented tree (``Package L#0 (P#0 ...)`` over ``Core`` over ``PU``
objects, with ``NUMANode`` memory children) followed by summary lines, among which
``CPU kind #i efficiency e cpuset 0x...``. Only what pinbackend's
:class:`~pinbackend.core.topology.Topology` holds is extracted, as sets of OS CPU numbers (PU
P# values), together with what lstopo leaves *outside* such objects (PUs under no package,
no core, no NUMA node), so the tests can say how pinbackend represents those.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# "Type", "Type(subtype)", "Group0(Drawer)", then "L#i" and "(P#n ..." when present.
_OBJECT = re.compile(
    r"(?P<indent> *)(?P<type>[A-Za-z][A-Za-z0-9]*)(?:\([^)]*\))?"
    r"(?: L#\d+)?(?: \(P#(?P<os_index>\d+))?"
)
_SUMMARY = re.compile(r" *depth \d+:")
_KIND = re.compile(r"CPU kind #(?P<index>\d+) efficiency (?P<efficiency>-?\d+) cpuset (?P<set>\S+)")
# Memory objects hang off the CPU-side object whose PUs are local to them.
_MEMORY_TYPES = ("NUMANode", "MemCache")


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

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def cpu_side(self) -> _Node:
        """This object, or for a memory object the nearest CPU-side object above it."""
        node = self
        while node.type in _MEMORY_TYPES:
            node = node.parent
        return node

    def holds_numa_node(self) -> bool:
        """Whether a NUMA node hangs off this object (directly or below a memory-side cache)."""
        return any(
            child.type == "NUMANode" or (child.type == "MemCache" and child.holds_numa_node())
            for child in self.children
            if child.type in _MEMORY_TYPES
        )


@dataclass(frozen=True)
class Expected:
    """What lstopo reports for one snapshot, as OS CPU numbers.

    ``pus`` are the PUs lstopo shows: the allowed ones (or every online one with
    ``--disallowed``). ``packages`` pairs each Package's P# (None when lstopo shows none)
    with its PUs; ``numa_nodes`` maps each NUMA node to the PUs of the object it hangs off.
    The ``*_less`` sets are the PUs lstopo places under no such object.
    """

    pus: frozenset[int]
    packages: tuple[tuple[int | None, frozenset[int]], ...]
    package_less: frozenset[int]
    numa_nodes: dict[int, frozenset[int]]
    numa_less: frozenset[int]
    cores: frozenset[frozenset[int]]
    core_less: frozenset[int]
    l3_groups: frozenset[frozenset[int]]
    cpu_kinds: tuple[frozenset[int], ...]


@dataclass(frozen=True)
class HwlocTest:
    """One ``NAME.test`` of hwloc's ``tests/hwloc/linux``: a snapshot and an expected output."""

    name: str
    folder: Path
    source: str
    target: str
    options: tuple[str, ...]
    env: tuple[str, ...]

    @property
    def snapshot(self) -> Path:
        return self.folder / self.source

    @property
    def console(self) -> Path:
        return self.folder / self.target


def parse_test(path: Path) -> HwlocTest:
    """Parse a ``NAME.test`` file (``source:``, ``target:``, ``options:``, ``env:`` lines)."""
    fields: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        key, colon, value = line.partition(":")
        if colon and not key.startswith("#") and key.strip().isalpha():
            fields.setdefault(key.strip(), []).append(value.strip())
    options: list[str] = []
    for word in shlex.split(" ".join(fields.get("options", []))):
        if options and options[-1] == "--filter":  # the one option here that takes a value
            options[-1] += f" {word}"
        else:
            options.append(word)
    env = tuple(
        line.split("=", 1)[0] for line in fields.get("env", []) if not line.startswith("export")
    )
    return HwlocTest(
        name=path.stem,
        folder=path.parent,
        source=fields["source"][0],
        target=fields["target"][0],
        options=tuple(options),
        env=env,
    )


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

    def outside(name: str) -> frozenset[int]:
        return frozenset(
            pu.os_index
            for pu in by_type("PU")
            if not any(above.type == name for above in pu.ancestors())
        )

    return Expected(
        pus=frozenset(node.os_index for node in by_type("PU")),
        packages=tuple((node.os_index, node.pus()) for node in by_type("Package")),
        package_less=outside("Package"),
        numa_nodes={node.os_index: node.cpu_side().pus() for node in by_type("NUMANode")},
        numa_less=frozenset(
            pu.os_index
            for pu in by_type("PU")
            if not any(above.holds_numa_node() for above in pu.ancestors())
        ),
        cores=frozenset(node.pus() for node in by_type("Core")),
        core_less=outside("Core"),
        l3_groups=frozenset(node.pus() for node in by_type("L3Cache")),
        cpu_kinds=_kinds(lines[end:]),
    )
