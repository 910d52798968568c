"""read_topology on synthetic /sys and /proc trees: odd kernels, cgroups, corrupt files, live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinbackend.core.cpuset import format_cpu_list
from pinbackend.core.sysfs import read_topology
from pinbackend.core.topology import UNKNOWN_ID, Topology, TopologyError

CPU = "sys/devices/system/cpu"
NODE = "sys/devices/system/node"


def make_root(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write ``files`` (path relative to ``root`` -> content) and return ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content + "\n")
    return root


def kernel_mask(cpus) -> str:
    """Format CPUs as the kernel's hex mask: 32-bit words, most significant first."""
    value = sum(1 << cpu for cpu in cpus)
    words = max(cpus) // 32 + 1
    return ",".join(f"{value >> 32 * word & 0xFFFFFFFF:08x}" for word in reversed(range(words)))


def machine_files(machine: Topology, masks: bool) -> dict[str, str]:
    """The sysfs files a kernel writes for ``machine``: only masks, or only ``*_list`` files."""

    def cpu_set(name: str, cpus) -> dict[str, str]:
        """One CPU-set file in mask form (``name``) or list form (``name_list``)."""
        if masks:
            return {name: kernel_mask(cpus)}
        return {f"{name}_list": format_cpu_list(cpus)}

    def cache_set(cpus) -> dict[str, str]:
        """A cache's shared CPUs: ``shared_cpu_map`` or ``shared_cpu_list``."""
        if masks:
            return {"shared_cpu_map": kernel_mask(cpus)}
        return {"shared_cpu_list": format_cpu_list(cpus)}

    files = {f"{CPU}/online": format_cpu_list(machine.online)}

    def add(folder: str, entries: dict[str, str]) -> None:
        files.update({f"{folder}/{name}": text for name, text in entries.items()})

    for package, cpus in machine.packages.items():
        for cpu in cpus:
            add(f"{CPU}/cpu{cpu}/topology", {"physical_package_id": str(package)})
            add(f"{CPU}/cpu{cpu}/topology", cpu_set("core_siblings", cpus))
    for core_id, core in enumerate(machine.cores):
        for cpu in core:
            add(f"{CPU}/cpu{cpu}/topology", {"core_id": str(core_id)})
            add(f"{CPU}/cpu{cpu}/topology", cpu_set("thread_siblings", core))
            # An L1 cache per core, which must not count as an L3 group.
            add(f"{CPU}/cpu{cpu}/cache/index0", {"level": "1", **cache_set(core)})
    for group in machine.l3_groups:
        for cpu in group:
            add(f"{CPU}/cpu{cpu}/cache/index3", {"level": "3", **cache_set(group)})
    for node, cpus in machine.numa_nodes.items():
        node_set = {"cpumap": kernel_mask(cpus)} if masks else {"cpulist": format_cpu_list(cpus)}
        add(f"{NODE}/node{node}", node_set)
    return files


def assert_same_machine(read: Topology, machine: Topology) -> None:
    assert read.online == machine.online
    assert read.allowed == machine.allowed
    assert read.packages == machine.packages
    assert read.numa_nodes == machine.numa_nodes
    assert set(read.cores) == set(machine.cores)
    assert set(read.l3_groups) == set(machine.l3_groups)


# ---------------------------------------------------------------- regular and odd kernels


@settings(max_examples=25, deadline=None)
@given(
    packages=st.integers(1, 3),
    numa_per_package=st.integers(1, 2),
    l3_per_numa=st.integers(1, 2),
    cores_per_l3=st.integers(1, 3),
    threads_per_core=st.integers(1, 2),
    masks=st.booleans(),
)
def test_round_trip_of_regular_machines(masks, **shape):
    machine = Topology.uniform(**shape)
    with tempfile.TemporaryDirectory() as folder:
        read = read_topology(make_root(Path(folder), machine_files(machine, masks)))
    assert_same_machine(read, machine)


def test_bitmap_only_sysfs_without_online_list(tmp_path):
    """Old kernels (2.6) have no ``*_list`` files and no cpu/online: masks and cpuN folders."""
    machine = Topology.uniform(packages=2, cores_per_l3=2, threads_per_core=2)
    files = machine_files(machine, masks=True)
    del files[f"{CPU}/online"]
    read = read_topology(make_root(tmp_path, files))
    assert_same_machine(read, machine)
    assert not any(rel.endswith("_list") for rel in files)
    assert any("online" in note for note in read.notes)


def test_offline_cpu_is_left_out_everywhere(tmp_path):
    machine = Topology.uniform(packages=1, cores_per_l3=2, threads_per_core=2)  # cores {0,2} {1,3}
    files = machine_files(machine, masks=False)
    files[f"{CPU}/online"] = "0-2"
    files[f"{CPU}/cpu1/online"] = "0"  # a per-CPU file can disagree with a stale list
    read = read_topology(make_root(tmp_path, files))
    assert read.online == read.allowed == frozenset({0, 2})
    assert read.cores == (frozenset({0, 2}),)
    assert read.packages == {0: frozenset({0, 2})}
    assert read.l3_groups == (frozenset({0, 2}),)


@pytest.mark.parametrize(
    ("vendor", "family", "n_cores"),
    [
        ("AuthenticAMD", "21", 4),
        ("AuthenticAMD", "22", 4),
        ("AuthenticAMD", "23", 2),
        ("GenuineIntel", "21", 2),
    ],
)
def test_amd_modules_split_by_core_id(tmp_path, vendor, family, n_cores):
    """Bulldozer lists both cores of a module as thread siblings, with distinct core ids.

    hwloc makes one core per thread only on AMD families 15h and 16h; elsewhere thread
    siblings are one core whatever their core ids say.
    """
    files = {f"{CPU}/online": "0-3"}
    for cpu in range(4):
        files[f"{CPU}/cpu{cpu}/topology/physical_package_id"] = "0"
        files[f"{CPU}/cpu{cpu}/topology/core_id"] = str(cpu)
        files[f"{CPU}/cpu{cpu}/topology/thread_siblings_list"] = "0-1" if cpu < 2 else "2-3"
    files["proc/cpuinfo"] = "".join(
        f"processor : {cpu}\nvendor_id : {vendor}\ncpu family : {family}\n\n" for cpu in range(4)
    )
    read = read_topology(make_root(tmp_path, files))
    assert len(read.cores) == n_cores


def test_unknown_package_ids_fall_back_to_package_sets(tmp_path):
    files = {f"{CPU}/online": "0-3"}
    for cpu in range(4):
        files[f"{CPU}/cpu{cpu}/topology/physical_package_id"] = "-1"
        files[f"{CPU}/cpu{cpu}/topology/package_cpus_list"] = "0-1" if cpu < 2 else "2-3"
    read = read_topology(make_root(tmp_path, files))
    assert sorted(read.packages.values(), key=min) == [frozenset({0, 1}), frozenset({2, 3})]
    assert any("package" in note for note in read.notes)


# ---------------------------------------------------------------- hwloc's rules


def test_bitmaps_win_over_lists(tmp_path):
    """hwloc reads the bitmaps; its own snapshots have list files that disagree with them."""
    files = {f"{CPU}/online": "0-3"}
    for cpu in range(4):
        topology, cache = f"{CPU}/cpu{cpu}/topology", f"{CPU}/cpu{cpu}/cache/index3"
        files[f"{topology}/thread_siblings"] = kernel_mask({cpu})
        files[f"{topology}/thread_siblings_list"] = "0-3"
        files[f"{topology}/core_siblings"] = kernel_mask(range(4))
        files[f"{topology}/core_siblings_list"] = str(cpu)
        files[f"{cache}/level"] = "3"
        files[f"{cache}/shared_cpu_map"] = kernel_mask(range(4))
        files[f"{cache}/shared_cpu_list"] = "0-1" if cpu < 2 else str(cpu)  # lists overlap
    files[f"{NODE}/node0/cpumap"] = kernel_mask(range(4))
    files[f"{NODE}/node0/cpulist"] = "0"
    read = read_topology(make_root(tmp_path, files))
    assert read.cores == tuple(frozenset({cpu}) for cpu in range(4))
    assert read.packages == read.numa_nodes == {0: frozenset(range(4))}
    assert read.l3_groups == (frozenset(range(4)),)


def test_sets_that_cross_keep_the_first_made(tmp_path):
    """A set that partially overlaps one made before it is dropped: groups always nest."""
    files = {f"{CPU}/online": "0-3"}
    package = {0: {0, 1}, 1: {0, 1}, 2: {2, 3}, 3: {2, 3}}
    l3 = {0: {0, 1, 2}, 1: {0, 1, 2}, 2: {0, 1, 2}, 3: {3}}
    for cpu in range(4):
        files[f"{CPU}/cpu{cpu}/topology/thread_siblings"] = kernel_mask({cpu})
        files[f"{CPU}/cpu{cpu}/topology/core_siblings"] = kernel_mask(package[cpu])
        files[f"{CPU}/cpu{cpu}/topology/physical_package_id"] = str(cpu // 2)
        files[f"{CPU}/cpu{cpu}/cache/index3/level"] = "3"
        files[f"{CPU}/cpu{cpu}/cache/index3/shared_cpu_map"] = kernel_mask(l3[cpu])
    read = read_topology(make_root(tmp_path, files))
    # CPU 0 makes package {0,1} and L3 {0,1,2}; CPU 2's package {2,3} crosses that L3.
    assert read.packages == {UNKNOWN_ID: frozenset({2, 3}), 0: frozenset({0, 1})}
    assert set(read.l3_groups) == {frozenset({0, 1, 2}), frozenset({3})}
    assert any("no package" in note for note in read.notes)


def test_only_the_first_cpu_of_a_set_makes_it(tmp_path):
    """A set is made from what its first CPU reports; later CPUs cannot contradict it."""
    files = {f"{CPU}/online": "0-3"}
    for cpu in range(4):
        # CPU 2 wrongly reports {0,1,2,3}; hwloc never reads a set from it (CPU 0 is first).
        siblings = {0, 1, 2, 3} if cpu == 2 else ({0, 1} if cpu < 2 else {2, 3})
        files[f"{CPU}/cpu{cpu}/topology/core_siblings"] = kernel_mask(siblings)
        files[f"{CPU}/cpu{cpu}/topology/physical_package_id"] = str(cpu // 2)
    read = read_topology(make_root(tmp_path, files))
    assert read.packages == {UNKNOWN_ID: frozenset({2, 3}), 0: frozenset({0, 1})}


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        # node 0 offline (absent from node/online): its CPUs are in no node
        (
            {"online": "1", "node0/cpumap": "f", "node1/cpumap": "a"},
            {UNKNOWN_ID: {0, 2}, 1: {1, 3}},
        ),
        # node 1 overlaps node 0: hwloc drops it
        ({"node0/cpumap": "3", "node1/cpumap": "e"}, {0: {0, 1}, UNKNOWN_ID: {2, 3}}),
        # no node has a readable cpumap: one node
        ({"node0/cpumap": "zz"}, {0: {0, 1, 2, 3}}),
    ],
)
def test_numa_nodes_as_hwloc_keeps_them(tmp_path, nodes, expected):
    files = {f"{CPU}/online": "0-3", **{f"{NODE}/{rel}": text for rel, text in nodes.items()}}
    read = read_topology(make_root(tmp_path, files))
    assert read.numa_nodes == {node: frozenset(cpus) for node, cpus in expected.items()}
    assert read.notes


def test_cpu_without_a_topology_folder_is_not_counted(tmp_path):
    """hwloc counts a CPU only where the kernel exports its topology folder."""
    machine = Topology.uniform(packages=1, cores_per_l3=4)
    files = machine_files(machine, masks=True)
    files = {rel: text for rel, text in files.items() if "/cpu2/" not in rel}
    (tmp_path / CPU / "cpu2").mkdir(parents=True)
    read = read_topology(make_root(tmp_path, files))
    assert read.online == frozenset({0, 1, 3})
    assert any("topology folder" in note for note in read.notes)


# ---------------------------------------------------------------- missing files


def test_only_proc_cpuinfo(tmp_path):
    blocks = [
        f"processor\t: {cpu}\nphysical id\t: {cpu // 4}\ncore id\t\t: {cpu % 2}\n"
        for cpu in range(8)
    ]
    root = make_root(tmp_path, {"proc/cpuinfo": "\n".join(blocks)})
    read = read_topology(root)
    assert read.online == read.allowed == frozenset(range(8))
    assert read.packages == {0: frozenset(range(4)), 1: frozenset(range(4, 8))}
    assert set(read.cores) == {frozenset(c) for c in ({0, 2}, {1, 3}, {4, 6}, {5, 7})}
    assert read.numa_nodes == {0: frozenset(range(8))}
    assert read.l3_groups == read.cpu_kinds == ()
    assert read.source == str(root)
    assert read.notes


def test_cpuinfo_without_topology_fields(tmp_path):
    """A VM's cpuinfo may name processors only: one package, one core per CPU."""
    root = make_root(tmp_path, {"proc/cpuinfo": "processor : 0\n\nprocessor : 1\n"})
    read = read_topology(root)
    assert read.packages == {0: frozenset({0, 1})}
    assert read.cores == (frozenset({0}), frozenset({1}))


def test_only_the_online_list(tmp_path):
    read = read_topology(make_root(tmp_path, {f"{CPU}/online": "0-3"}))
    assert read.online == read.allowed == frozenset(range(4))
    assert read.packages == read.numa_nodes == {0: frozenset(range(4))}
    assert read.cores == tuple(frozenset({cpu}) for cpu in range(4))
    assert read.cpu_quota is None
    notes = " ".join(read.notes)
    assert "one package" in notes and "one core per CPU" in notes and "one node" in notes


@pytest.mark.parametrize("layout", ["missing", "empty", "file", "empty sys"])
def test_root_without_machine_files_is_an_error(tmp_path, layout):
    root = tmp_path / "root"
    if layout == "empty":
        root.mkdir()
    elif layout == "file":
        root.write_text("not a folder")
    elif layout == "empty sys":
        (root / "sys").mkdir(parents=True)
    with pytest.raises(TopologyError, match="sys/") as error:
        read_topology(root)
    assert str(root) in str(error.value)
    assert "'/'" in str(error.value)  # the remedy: read this machine or a real snapshot


# ---------------------------------------------------------------- cgroups


def cgroup_root(tmp_path, mounts: str, cgroup: str, extra: dict[str, str]) -> Path:
    files = {f"{CPU}/online": "0-7", "proc/mounts": mounts, "proc/self/cgroup": cgroup}
    return make_root(tmp_path, {**files, **extra})


def test_cgroup_v2_cpuset_and_quota(tmp_path):
    root = cgroup_root(
        tmp_path,
        "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0",
        "0::/job/step",
        {
            "sys/fs/cgroup/job/step/cpuset.cpus.effective": "2-3,6",
            "sys/fs/cgroup/job/step/cpu.max": "max 100000",
            "sys/fs/cgroup/job/cpu.max": "250000 100000",  # a parent's limit binds the child
        },
    )
    read = read_topology(root)
    assert read.allowed == frozenset({2, 3, 6})
    assert read.online == frozenset(range(8))
    assert read.cpu_quota == 2.5


def test_cgroup_v2_unlimited(tmp_path):
    root = cgroup_root(
        tmp_path,
        "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0",
        "0::/",
        {"sys/fs/cgroup/cpu.max": "max 100000", "sys/fs/cgroup/cpuset.cpus.effective": "0-7"},
    )
    read = read_topology(root)
    assert read.cpu_quota is None
    assert read.allowed == frozenset(range(8))


def test_cgroup_v2_in_container_without_cgroup_namespace(tmp_path):
    """The cgroup path is the host's, but the mount shows only the container's own cgroup."""
    root = cgroup_root(
        tmp_path,
        "cgroup2 /sys/fs/cgroup cgroup2 ro 0 0",
        "0::/system.slice/docker-abc.scope",
        {"sys/fs/cgroup/cpu.max": "150000 100000", "sys/fs/cgroup/cpuset.cpus.effective": "4-5"},
    )
    read = read_topology(root)
    assert read.cpu_quota == 1.5
    assert read.allowed == frozenset({4, 5})


def test_cgroup_v1_quota_and_cpuset(tmp_path):
    root = cgroup_root(
        tmp_path,
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,cpuset 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0",
        "5:cpuset:/slurm/job1\n3:cpu,cpuacct:/slurm/job1\n0::/",
        {
            "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "50000",
            "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000",
            "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_quota_us": "-1",
            "sys/fs/cgroup/cpu,cpuacct/slurm/cpu.cfs_period_us": "100000",
            "sys/fs/cgroup/cpuset/slurm/job1/cpuset.cpus": "0-7",
            # the effective set excludes what parents take away: preferred
            "sys/fs/cgroup/cpuset/slurm/job1/cpuset.effective_cpus": "0-1",
        },
    )
    read = read_topology(root)
    assert read.cpu_quota == 0.5
    assert read.allowed == frozenset({0, 1})


def test_cgroup_v1_unlimited_quota(tmp_path):
    root = cgroup_root(
        tmp_path,
        "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0",
        "2:cpu:/",
        {
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
        },
    )
    assert read_topology(root).cpu_quota is None


def test_old_cpuset_filesystem(tmp_path):
    """The pre-cgroup /dev/cpuset interface, named by /proc/self/cpuset (mount with a space)."""
    root = cgroup_root(
        tmp_path,
        "none /dev/my\\040cpusets cpuset rw 0 0",
        "",
        {"proc/self/cpuset": "/batch", "dev/my cpusets/batch/cpus": "1,3,5-6"},
    )
    assert read_topology(root).allowed == frozenset({1, 3, 5, 6})


def test_cpuset_naming_only_offline_cpus_is_ignored(tmp_path):
    root = cgroup_root(
        tmp_path,
        "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0",
        "0::/",
        {f"{CPU}/online": "0-3", "sys/fs/cgroup/cpuset.cpus.effective": "6-7"},
    )
    read = read_topology(root)
    assert read.allowed == frozenset(range(4))
    assert read.notes


# ---------------------------------------------------------------- CPU kinds


def kind_root(tmp_path, per_cpu: dict[int, dict[str, str]], extra=None) -> Path:
    files = {f"{CPU}/online": format_cpu_list(per_cpu)}
    for cpu, values in per_cpu.items():
        for name, value in values.items():
            files[f"{CPU}/cpu{cpu}/{name}"] = value
    return make_root(tmp_path, {**files, **(extra or {})})


def test_kinds_from_capacity_put_little_cores_first(tmp_path):
    capacity = {0: "1024", 1: "1024", 2: "446", 3: "446"}
    root = kind_root(tmp_path, {cpu: {"cpu_capacity": c} for cpu, c in capacity.items()})
    assert read_topology(root).cpu_kinds == (frozenset({2, 3}), frozenset({0, 1}))


def test_kinds_from_intel_pmus_put_atoms_first(tmp_path):
    root = kind_root(
        tmp_path,
        {cpu: {} for cpu in range(6)},
        {"sys/devices/cpu_core/cpus": "0-3", "sys/devices/cpu_atom/cpus": "4-5"},
    )
    assert read_topology(root).cpu_kinds == (frozenset({4, 5}), frozenset(range(4)))


def test_cpu_that_reports_nothing_is_of_no_kind(tmp_path):
    """hwloc puts a CPU without frequency, capacity or PMU in no kind (2arm-2c: CPU 1)."""
    root = kind_root(tmp_path, {0: {"cpufreq/cpuinfo_max_freq": "800000"}, 1: {}})
    assert read_topology(root).cpu_kinds == (frozenset({0}),)


@pytest.mark.parametrize(
    ("max_freqs", "kinds"),
    [
        # Turbo Boost Max 3.0: favoured cores boost 4% higher, still one kind.
        (["5000000", "5200000", "5000000", "5200000"], (frozenset(range(4)),)),
        # 20% apart is a real difference.
        (["4000000", "4800000", "4000000", "4800000"], (frozenset({0, 2}), frozenset({1, 3}))),
    ],
)
def test_kinds_from_frequencies(tmp_path, max_freqs, kinds):
    per_cpu = {
        cpu: {"cpufreq/base_frequency": "1900000", "cpufreq/cpuinfo_max_freq": top}
        for cpu, top in enumerate(max_freqs)
    }
    assert read_topology(kind_root(tmp_path, per_cpu)).cpu_kinds == kinds


@pytest.mark.parametrize(("family", "kinds"), [("25", 0), ("26", 2)])
def test_kinds_skipped_on_amd_before_zen5(tmp_path, family, kinds):
    """Pre-Zen 5 AMD cores boost differently but are one kind; hwloc ignores them too."""
    per_cpu = {cpu: {"cpufreq/cpuinfo_max_freq": str(3000000 + cpu * 500000)} for cpu in (0, 1)}
    cpuinfo = "".join(
        f"processor : {cpu}\nvendor_id : AuthenticAMD\ncpu family : {family}\n\n" for cpu in (0, 1)
    )
    read = read_topology(kind_root(tmp_path, per_cpu, {"proc/cpuinfo": cpuinfo}))
    assert len(read.cpu_kinds) == kinds


# ---------------------------------------------------------------- corrupt files


def test_corrupt_files_leave_their_cpus_ungrouped_with_notes(tmp_path):
    """A corrupt file loses what it alone describes (as in hwloc), never the rest."""
    machine = Topology.uniform(packages=2, cores_per_l3=2, threads_per_core=2)
    # cores {0,4} {1,5} {2,6} {3,7}; packages, NUMA nodes and L3s {0,1,4,5} {2,3,6,7}
    files = machine_files(machine, masks=False)
    files[f"{CPU}/online"] = "0-three"  # -> the cpuN folders
    files[f"{CPU}/cpu0/topology/core_siblings_list"] = "0-4000000000"  # must not fill memory
    files[f"{CPU}/cpu0/topology/thread_siblings_list"] = "zero,four"  # -> cores {0} and {4}
    files[f"{CPU}/cpu2/topology/physical_package_id"] = "\x00\xff"  # -> package renumbered
    files[f"{NODE}/node0/cpulist"] = "a-b"  # -> CPUs 0,1,4,5 in no node
    files[f"{CPU}/cpu2/cache/index3/level"] = "three"  # -> no L3 {2,3,6,7}
    files[f"{CPU}/cpu3/cpu_capacity"] = "big"
    read = read_topology(
        make_root(
            tmp_path,
            {
                **files,
                "proc/cpuinfo": b"processor : 0\n\xff\xfe\n",  # not text
                "proc/mounts": "garbage\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0",
                "proc/self/cgroup": "no colons here\n0::/",
                "sys/fs/cgroup/cpu.max": "lots 100000",
                "sys/fs/cgroup/cpuset.cpus.effective": "?",
            },
        )
    )
    first, second = frozenset({0, 1, 4, 5}), frozenset({2, 3, 6, 7})
    assert read.online == read.allowed == machine.online
    assert set(read.cores) == {frozenset(c) for c in ({0}, {4}, {1, 5}, {2, 6}, {3, 7})}
    assert read.numa_nodes == {UNKNOWN_ID: first, 1: second}
    assert read.packages == {UNKNOWN_ID: first, 0: second}
    assert read.l3_groups == (first,)
    assert read.cpu_quota is None
    corrupt = [note for note in read.notes if note.startswith("corrupt")]
    for name in ("online", "core_siblings", "thread_siblings", "cpulist", "level", "cpu.max"):
        assert any(name in note for note in corrupt), (name, read.notes)
    for name in ("cpus.effective", "cpuinfo", "physical_package_id", "cpu_capacity"):
        assert any(name in note for note in corrupt), (name, read.notes)


def test_corrupt_notes_are_not_repeated_per_cpu(tmp_path):
    files = {f"{CPU}/online": "0-63"}
    for cpu in range(64):
        files[f"{CPU}/cpu{cpu}/topology/thread_siblings_list"] = str(cpu)
        files[f"{CPU}/cpu{cpu}/cache/index0/shared_cpu_list"] = str(cpu)
        files[f"{CPU}/cpu{cpu}/cache/index0/level"] = "?"
    read = read_topology(make_root(tmp_path, files))
    assert len(read.cores) == 64
    assert sum("level" in note for note in read.notes) == 1


# ---------------------------------------------------------------- this machine


def test_live_machine():
    from pinbackend.host.machine import read_topology

    read = read_topology()
    assert read.source == "live"
    assert read.allowed == frozenset(os.sched_getaffinity(0))
    for groups in (read.cores, tuple(read.packages.values()), tuple(read.numa_nodes.values())):
        for cpu in read.online:
            assert sum(cpu in group for group in groups) == 1
    assert read == read_topology(Path("/")) == read_topology(os.sep)
    assert read.cpu_quota is None or read.cpu_quota > 0


def test_live_topology_is_cached_but_follows_the_affinity_mask():
    code = """
    import json, os
    from pinbackend.host import machine
    first = machine.read_topology()
    os.sched_setaffinity(0, {min(first.allowed)})
    second = machine.read_topology()
    reads = machine._live_machine.cache_info().misses
    machine.clear_topology_cache()
    third = machine.read_topology()
    print(json.dumps({"reads_before_clear": reads, "same_cores": second.cores == first.cores,
                      "allowed": [sorted(t.allowed) for t in (first, second, third)]}))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    data = json.loads(result.stdout)
    allowed = sorted(os.sched_getaffinity(0))
    assert data["reads_before_clear"] == 1
    assert data["same_cores"] is True
    assert data["allowed"] == [allowed, allowed[:1], allowed[:1]]
