"""read_topology on real machines' sysfs snapshots must agree with hwloc's lstopo output.

Every Linux snapshot of hwloc's ``tests/hwloc/linux`` that hwloc checks against an lstopo
``.console`` output is vendored with its ``.test`` file (which names the snapshot, the lstopo
options and the environment): the seven snapshots used across the suite in
``tests/data/topologies``, the others in ``tests/data/topologies/conformance``. Each console
is compared on allowed PUs, packages, NUMA nodes, cores, L3 groups and CPU kinds; the
expected answer always comes from the console file.

Where lstopo shows a thing pinbackend's Topology cannot hold, the comparison says how it maps:

- lstopo shows no package when sysfs names none: pinbackend assumes one package, id 0;
- PUs under no package or no NUMA node (a package set that conflicts, an offline node) sit
  under ``UNKNOWN_ID``; PUs under no core (no core siblings) are one core each;
- several packages with no P# or the same P# (s390, POWER, old ia64): pinbackend numbers
  them from 0 by first CPU, as ids must be unique;
- NUMA nodes lstopo hides because the cpuset's ``mems`` excludes them keep their CPUs in
  pinbackend (it plans CPUs, not memory); nodes without CPUs in sysfs (HBM, NVM, GPU memory,
  whose locality hwloc finds from HMAT initiators or distances) are not pinbackend nodes;
- one CPU kind holding every CPU tells nothing apart: it equals no kind.

Not compared, because lstopo's answer there is not a console file: the snapshots hwloc
checks only against XML (2i386-2c-nohugepage, 2i386-2t-hugepagesizecount,
32amd64-4s2n4c-cgroup2, 32em64t-2n8c+dax+nvme+mic+dimms, 40intel64-2g2n4c+pcilocality,
fakeheterocpunuma, fakepcilocalities, nvidia-dgx-gb10, allowed/test1) and the XML outputs
of console-checked snapshots (16amd64-8n2c-cpusets-xml, 16em64t-4s2c2t-xml,
16em64t-4s2c2t-offlines-xml). docs/limitations.md lists the same.
"""

from __future__ import annotations

import tarfile

import pytest
from _lstopo import HwlocTest, parse_console, parse_hwloc_cpuset, parse_test
from conftest import SNAPSHOTS, TOPOLOGIES

from pinbackend.core.sysfs import read_topology
from pinbackend.core.topology import UNKNOWN_ID

TESTS = sorted(
    (
        parse_test(path)
        for folder in (TOPOLOGIES, TOPOLOGIES / "conformance")
        for path in folder.glob("*.test")
    ),
    key=lambda test: test.name,
)
CONSOLE_TESTS = [test for test in TESTS if test.target.endswith(".console")]

# lstopo options that change nothing compared here.
NEUTRAL_OPTIONS = {"-", "-v", "--no-icaches"}
# Options that remove objects from lstopo's output: what they may remove is not compared.
# --merge and --filter all:structure drop levels that add no structure (a core of one PU,
# an L3 as big as its package); --no-caches drops every cache.
HIDING_OPTIONS = {
    "--no-caches": {"l3_groups"},
    "--merge": {"cores", "l3_groups"},
    "--filter all:structure": {"cores", "l3_groups"},
}
# --disallowed shows every online PU, allowed or not: compared over the online CPUs.
ALL_ONLINE = "--disallowed"
# Environment hwloc's tests set: error messages off, and NVIDIA GPU memory nodes kept (those
# have no CPUs in sysfs, so they are never pinbackend nodes; see test_numa_nodes).
NEUTRAL_ENV = {"HWLOC_SHOW_ERRORS", "HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES"}
# cgroup v1: pinbackend reads cpuset.effective_cpus (what the kernel enforces), hwloc reads
# cpuset.cpus; this snapshot was cut down by hand and its two files disagree (0-87 against
# 0-175), so lstopo allows CPUs 88-103 and pinbackend does not.
ALLOWED_DIFFERS = {"nvidiagpunumanodes", "nvidiagpunumanodes-kept"}
ASPECTS = ("packages", "numa_nodes", "cores", "l3_groups", "cpu_kinds")


def _hidden(test: HwlocTest) -> set[str]:
    hidden: set[str] = set()
    for option in test.options:
        if option not in NEUTRAL_OPTIONS | {ALL_ONLINE}:
            hidden |= HIDING_OPTIONS[option]
    return hidden


def _params(aspect: str) -> list:
    return [
        pytest.param(test, id=test.name) for test in CONSOLE_TESTS if aspect not in _hidden(test)
    ]


@pytest.fixture(scope="module")
def unpack(tmp_path_factory):
    """Return a function that unpacks a snapshot once and gives its root folder."""
    roots = {}

    def root(test: HwlocTest):
        if test.snapshot not in roots:
            target = tmp_path_factory.mktemp(test.source.removesuffix(".tar.bz2"))
            with tarfile.open(test.snapshot) as archive:
                archive.extractall(target, filter="tar")
            (top,) = [path for path in target.iterdir() if path.is_dir()]
            roots[test.snapshot] = top
        return roots[test.snapshot]

    return root


@pytest.fixture
def compared(request, unpack):
    """(our topology seen through the PUs lstopo shows, lstopo's answer) for one console."""
    test = request.param
    topology = read_topology(unpack(test))
    expected = parse_console(test.console)
    assert expected.pus <= topology.online, "lstopo shows PUs we do not count as online"
    return topology.restrict(expected.pus), expected


def test_every_console_is_compared():
    """34 snapshots, 39 console outputs; every option and variable is understood."""
    assert len({test.snapshot for test in CONSOLE_TESTS}) == 34
    assert len(CONSOLE_TESTS) == 39
    assert all(test.snapshot.exists() and test.console.exists() for test in TESTS)
    known = NEUTRAL_OPTIONS | set(HIDING_OPTIONS) | {ALL_ONLINE}
    assert {option for test in TESTS for option in test.options} <= known
    assert {name for test in TESTS for name in test.env} <= NEUTRAL_ENV
    # The snapshots the rest of the suite uses stay where conftest finds them.
    assert {test.source.removesuffix(".tar.bz2") for test in TESTS} >= set(SNAPSHOTS)


@pytest.mark.parametrize(
    "test",
    [
        pytest.param(
            test,
            id=test.name,
            marks=[pytest.mark.xfail(strict=True, reason="cgroup v1 cpuset.cpus")]
            if test.name in ALLOWED_DIFFERS
            else [],
        )
        for test in CONSOLE_TESTS
    ],
)
def test_allowed_pus(test, unpack):
    topology = read_topology(unpack(test))
    shown = topology.online if ALL_ONLINE in test.options else topology.allowed
    assert shown == parse_console(test.console).pus


@pytest.mark.parametrize("compared", _params("packages"), indirect=True)
def test_packages(compared):
    view, expected = compared
    if not expected.packages:
        # lstopo shows no package when sysfs names no package set: one package assumed.
        assert view.packages == {0: view.online}
        return
    ours = dict(view.packages)
    assert ours.pop(UNKNOWN_ID, frozenset()) == expected.package_less
    shown = [(os_index, pus) for os_index, pus in expected.packages if pus]
    assert sorted(ours.values(), key=min) == sorted((pus for _, pus in shown), key=min)
    ids = [os_index for os_index, _ in expected.packages]
    if None not in ids and len(set(ids)) == len(ids):
        assert ours == dict(shown)
    else:
        # lstopo shows no P# or repeats one: ours are numbered by first CPU.
        assert sorted(ours, key=lambda package: min(ours[package])) == sorted(ours)


@pytest.mark.parametrize("compared", _params("numa_nodes"), indirect=True)
def test_numa_nodes(compared):
    view, expected = compared
    ours = dict(view.numa_nodes)
    memory_only = frozenset()
    for node, local in expected.numa_nodes.items():
        if node in ours:
            assert ours[node] == local, f"NUMA node {node}"
        else:
            # No CPUs in sysfs (hwloc placed it by initiators or distances): pinbackend
            # has no such node, and its nodes must split the node's PUs cleanly.
            assert all(cpus <= local or not cpus & local for cpus in ours.values()), node
            memory_only |= local
    assert ours.get(UNKNOWN_ID, frozenset()) <= expected.numa_less
    # Nodes lstopo hides (the cpuset's mems exclude them): their PUs are under no node there,
    # or under a node pinbackend does not have.
    for node, cpus in ours.items():
        if node not in expected.numa_nodes:
            assert cpus <= expected.numa_less | memory_only, f"NUMA node {node}"


@pytest.mark.parametrize("compared", _params("cores"), indirect=True)
def test_cores(compared):
    view, expected = compared
    alone = {frozenset({pu}) for pu in expected.core_less}
    assert set(view.cores) == {core for core in expected.cores if core} | alone
    assert len(view.cores) == len(set(view.cores))


@pytest.mark.parametrize("compared", _params("l3_groups"), indirect=True)
def test_l3_groups(compared):
    view, expected = compared
    assert set(view.l3_groups) == {group for group in expected.l3_groups if group}


def _distinct_kinds(kinds, cpus):
    kinds = tuple(kind & cpus for kind in kinds if kind & cpus)
    return () if kinds == (cpus,) else kinds


@pytest.mark.parametrize("compared", _params("cpu_kinds"), indirect=True)
def test_cpu_kinds(compared):
    view, expected = compared
    ours = _distinct_kinds(view.cpu_kinds, view.online)
    assert ours == _distinct_kinds(expected.cpu_kinds, view.online)


def test_source_names_the_root(snapshot_root):
    root = snapshot_root(SNAPSHOTS[0])
    assert read_topology(root).source == str(root)
    assert read_topology(str(root)).source == str(root)


def test_cpuset_snapshot_hides_nodes_not_cpus(snapshot_root):
    """The cpuset snapshot really exercises the cpuset: offline CPU 4 and CPUs 7-11 are out."""
    topology = read_topology(snapshot_root("16amd64-8n2c-cpusets"))
    assert 4 not in topology.online
    assert topology.online == frozenset(range(16)) - {4}
    assert topology.allowed == frozenset({0, 1, 2, 3, 5, 6, 12, 13, 14, 15})
    assert set(topology.to_dict()["numa_node_ids"]) == {0, 1, 2, 3, 6, 7}


def test_hybrid_kinds_put_efficiency_cores_first(snapshot_root):
    topology = read_topology(snapshot_root("20em64t-hybrid-1p6c2t+2ca4co1t"))
    assert topology.cpu_kinds == (frozenset(range(12, 20)), frozenset(range(12)))


def test_bulldozer_modules_are_two_cores(snapshot_root):
    """Thread siblings 0-1 with core ids 0 and 1 are two cores of one module (hwloc's AMD CU)."""
    topology = read_topology(snapshot_root("64amd64-4s2n4ca2co"))
    assert topology.core_of(0) == frozenset({0})
    assert len(topology.cores) == 64


def test_parse_hwloc_cpuset():
    assert parse_hwloc_cpuset("0x000ff000") == frozenset(range(12, 20))
    assert parse_hwloc_cpuset("0x1,0x00000001") == frozenset({0, 32})
    assert parse_hwloc_cpuset("0xffffffff,0xffffffff") == frozenset(range(64))
