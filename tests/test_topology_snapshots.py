"""read_topology on real machines' sysfs snapshots must agree with hwloc's lstopo output."""

from __future__ import annotations

import pytest
from _lstopo import parse_console, parse_hwloc_cpuset
from conftest import SNAPSHOTS, TOPOLOGIES

from pinbackend.core.sysfs import read_topology


def _nonempty(groups):
    return frozenset(group for group in groups if group)


@pytest.fixture(params=SNAPSHOTS)
def snapshot(request, snapshot_root):
    """(our topology seen through its allowed CPUs, lstopo's answer) for one snapshot."""
    name = request.param
    topology = read_topology(snapshot_root(name))
    expected = parse_console(TOPOLOGIES / f"{name}.console")
    assert topology.allowed == expected.allowed
    return topology.restrict(topology.allowed), expected


def test_snapshot_list_is_complete():
    assert len(SNAPSHOTS) == 7


def test_source_names_the_root(snapshot_root):
    root = snapshot_root(SNAPSHOTS[0])
    assert read_topology(root).source == str(root)
    assert read_topology(str(root)).source == str(root)


def test_packages(snapshot):
    view, expected = snapshot
    assert view.packages == {p: cpus for p, cpus in expected.packages.items() if cpus}


def test_cores(snapshot):
    view, expected = snapshot
    assert frozenset(view.cores) == expected.cores
    assert len(view.cores) == len(expected.cores)


def test_l3_groups(snapshot):
    view, expected = snapshot
    assert frozenset(view.l3_groups) == _nonempty(expected.l3_groups)


def test_cpu_kinds(snapshot):
    view, expected = snapshot
    kinds = tuple(kind & view.allowed for kind in expected.cpu_kinds)
    assert view.cpu_kinds == tuple(kind for kind in kinds if kind)


def test_numa_nodes(snapshot):
    view, expected = snapshot
    shown = {node: cpus for node, cpus in expected.numa_nodes.items() if cpus}
    # lstopo hides NUMA nodes whose memory the cpuset's "mems" excludes (16amd64-8n2c-cpusets:
    # nodes 0, 6 and 7), so their allowed CPUs sit under no node there. pinbackend plans CPUs
    # only: those nodes must hold exactly the CPUs lstopo left without a node.
    assert {n: cpus for n, cpus in view.numa_nodes.items() if n in expected.numa_nodes} == shown
    hidden = [cpus for n, cpus in view.numa_nodes.items() if n not in expected.numa_nodes]
    assert frozenset().union(*hidden) == view.allowed - frozenset().union(*shown.values())


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
