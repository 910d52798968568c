"""The CPU budget on synthetic /proc and cgroup trees: v1, v2, nested, namespaces, variables.

Real cgroups are in tests/test_cgroups.py; these trees imitate what the kernel shows in the
cases a machine here cannot produce (cgroup v2 with controllers, namespaces, containers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _helpers import pinbackend_cli
from hypothesis import given
from hypothesis import strategies as st

from pinbackend.core._files import Files
from pinbackend.core.budget import (
    Budget,
    Limit,
    cgroup_limits,
    combine_limits,
    cores_within,
    read_budget,
    variable_limits,
    within_budget,
)
from pinbackend.core.cgroup import cgroup_mounts, cpu_quota
from pinbackend.core.topology import Topology
from pinbackend.host.budget import read_budget as read_live_budget

CPU = "sys/devices/system/cpu"


def make_root(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    return root


def mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    """mountinfo lines from (root, mount point, fstype, super options)."""
    lines = ["22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw"]
    for number, (root, point, fstype, options) in enumerate(mounts, 30):
        lines.append(
            f"{number} 22 0:{number} {root} {point} rw,nosuid,relatime shared:{number} - "
            f"{fstype} {fstype} {options}"
        )
    return "\n".join(lines)


def limits_of(root: Path, online=None) -> list[tuple[str, float, str]]:
    return [(limit.kind, limit.value, limit.source) for limit in cgroup_limits(Files(root), online)]


V1 = (
    ("/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
    ("/", "/sys/fs/cgroup/cpuset", "cgroup", "rw,cpuset"),
    ("/", "/sys/fs/cgroup/unified", "cgroup2", "rw"),  # hybrid: v2 without controllers
)


# ---------------------------------------------------------------- cgroup v2


def test_v2_nested_path_reads_every_ancestor_and_names_each_file(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw,nsdelegate")),
            "proc/self/cgroup": "0::/job/step/task",
            "sys/fs/cgroup/job/step/task/cpu.max": "max 100000",
            "sys/fs/cgroup/job/step/task/cpuset.cpus.effective": "2-3,6",
            "sys/fs/cgroup/job/step/cpu.max": "300000 100000",
            "sys/fs/cgroup/job/cpu.max": "150000 100000",  # the grandparent binds
            "sys/fs/cgroup/cpuset.cpus.effective": "0-7",
        },
    )
    assert limits_of(root) == [
        ("cpuset", 3, "/sys/fs/cgroup/job/step/task/cpuset.cpus.effective"),
        ("quota", 3.0, "/sys/fs/cgroup/job/step/cpu.max"),
        ("quota", 1.5, "/sys/fs/cgroup/job/cpu.max"),
    ]
    budget = read_budget(Files(root), Limit("online", 8, "/sys/devices/system/cpu/online"))
    assert budget.cpus == 1  # 1.5 CPUs of time: one whole CPU
    assert budget.binding == (Limit("quota", 1.5, "/sys/fs/cgroup/job/cpu.max"),)
    assert cpu_quota(Files(root)) == 1.5


def test_v2_container_with_its_own_cgroup_namespace(tmp_path):
    """Inside a cgroup namespace the process is at "/" and so is the mount's root."""
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")),
            "proc/self/cgroup": "0::/",
            "sys/fs/cgroup/cpu.max": "200000 100000",
            "sys/fs/cgroup/cpuset.cpus.effective": "0-3",
        },
    )
    assert limits_of(root) == [
        ("cpuset", 4, "/sys/fs/cgroup/cpuset.cpus.effective"),
        ("quota", 2.0, "/sys/fs/cgroup/cpu.max"),
    ]


def test_v2_namespace_whose_mount_shows_the_container_by_its_outer_path(tmp_path):
    """The process sees "/" and the mount root says where its cgroup is: the mount point."""
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(
                ("/system.slice/docker-abc.scope", "/sys/fs/cgroup", "cgroup2", "rw")
            ),
            "proc/self/cgroup": "0::/",
            "sys/fs/cgroup/cpu.max": "50000 100000",
            # not ours: the mount point is the container's cgroup, nothing under it is read
            "sys/fs/cgroup/system.slice/cpu.max": "10000 100000",
        },
    )
    assert limits_of(root) == [("quota", 0.5, "/sys/fs/cgroup/cpu.max")]


def test_v2_process_in_a_child_of_a_namespace_root(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")),
            "proc/self/cgroup": "0::/workers/w1",
            "sys/fs/cgroup/workers/w1/cpu.max": "max 100000",
            "sys/fs/cgroup/workers/cpu.max": "100000 100000",
            "sys/fs/cgroup/cpu.max": "400000 100000",
        },
    )
    assert [source for _, _, source in limits_of(root)] == [
        "/sys/fs/cgroup/workers/cpu.max",
        "/sys/fs/cgroup/cpu.max",
    ]


def test_v2_container_without_namespace_reads_below_the_mount_root_only(tmp_path):
    """No cgroup namespace: the path is the host's and the mount shows the container's
    cgroup at its root; ancestors above it are not visible (and not read)."""
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(
                ("/kubepods/pod1/ctr", "/sys/fs/cgroup", "cgroup2", "ro")
            ),
            "proc/self/cgroup": "0::/kubepods/pod1/ctr/app",
            "sys/fs/cgroup/app/cpu.max": "max 100000",
            "sys/fs/cgroup/cpu.max": "250000 100000",
            # a host path replayed under the mount would be wrong: it must not be read
            "sys/fs/cgroup/kubepods/pod1/ctr/app/cpu.max": "10000 100000",
        },
    )
    assert limits_of(root) == [("quota", 2.5, "/sys/fs/cgroup/cpu.max")]


def test_mount_root_above_the_namespace_is_skipped_with_a_note(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(("/../..", "/sys/fs/cgroup", "cgroup2", "rw")),
            "proc/self/cgroup": "0::/",
            "sys/fs/cgroup/cpu.max": "10000 100000",  # the host's root: not ours
        },
    )
    files = Files(root)
    assert cgroup_limits(files) == []
    assert any("above this process's cgroup namespace" in note for note in files.notes)


# ---------------------------------------------------------------- cgroup v1


def test_v1_quota_on_an_ancestor_is_found(tmp_path):
    """loky's cpu_count reads only the mount's root and misses this (loky#634)."""
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(*V1),
            "proc/self/cgroup": "4:cpuset:/slurm/job1\n3:cpu,cpuacct:/slurm/job1/step0\n0::/",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
            "sys/fs/cgroup/cpu,cpuacct/slurm/job1/step0/cpu.cfs_quota_us": "-1",
            "sys/fs/cgroup/cpu,cpuacct/slurm/job1/step0/cpu.cfs_period_us": "100000",
            "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "200000",
            "sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "50000",
            "sys/fs/cgroup/cpuset/slurm/job1/cpuset.cpus": "0-7",
            "sys/fs/cgroup/cpuset/slurm/job1/cpuset.effective_cpus": "0-5",
        },
    )
    assert limits_of(root) == [
        ("cpuset", 6, "/sys/fs/cgroup/cpuset/slurm/job1/cpuset.effective_cpus"),
        ("quota", 4.0, "/sys/fs/cgroup/cpu,cpuacct/slurm/job1/cpu.cfs_quota_us"),
    ]


def test_v1_container_without_namespace(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(
                ("/docker/abc", "/sys/fs/cgroup/cpu", "cgroup", "rw,cpu"),
                ("/docker/abc", "/sys/fs/cgroup/cpuset", "cgroup", "rw,cpuset"),
            ),
            "proc/self/cgroup": "3:cpuset:/docker/abc\n2:cpu:/docker/abc",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
            "sys/fs/cgroup/cpuset/cpuset.cpus": "4-5",
        },
    )
    assert limits_of(root) == [
        ("cpuset", 2, "/sys/fs/cgroup/cpuset/cpuset.cpus"),
        ("quota", 1.5, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    ]


def test_a_hierarchy_mounted_twice_is_read_once_where_it_shows_our_cgroup(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": "\n".join(
                [
                    "30 22 0:40 /other /mnt/elsewhere rw - cgroup cgroup rw,cpu",
                    "31 22 0:40 / /sys/fs/cgroup/my\\040cpu rw - cgroup cgroup rw,cpu",
                ]
            ),
            "proc/self/cgroup": "2:cpu:/job",
            "sys/fs/cgroup/my cpu/job/cpu.cfs_quota_us": "300000",
            "sys/fs/cgroup/my cpu/job/cpu.cfs_period_us": "100000",
            "mnt/elsewhere/cpu.cfs_quota_us": "100000",
            "mnt/elsewhere/cpu.cfs_period_us": "100000",
        },
    )
    assert limits_of(root) == [("quota", 3.0, "/sys/fs/cgroup/my cpu/job/cpu.cfs_quota_us")]
    assert [m.point for m in cgroup_mounts(Files(root))] == [
        "mnt/elsewhere",
        "sys/fs/cgroup/my cpu",
    ]


def test_without_mountinfo_proc_mounts_is_read(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/mounts": "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0",
            "proc/self/cgroup": "2:cpu:/a/b",
            "sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "100000",
            "sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000",
        },
    )
    assert limits_of(root) == [("quota", 1.0, "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us")]


@pytest.mark.parametrize(
    ("files", "corrupt"),
    [
        ({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "lots"}, "cpu.cfs_quota_us"),
        ({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000"}, "cpu.cfs_quota_us"),  # no period
        (
            {
                "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "0",
                "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
            },
            "cpu.cfs_quota_us",
        ),
        ({"sys/fs/cgroup/cpuset/cpuset.effective_cpus": "0-x"}, "cpuset.effective_cpus"),
    ],
)
def test_corrupt_cgroup_files_give_no_limit_and_a_note(tmp_path, files, corrupt):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(
                ("/", "/sys/fs/cgroup/cpu", "cgroup", "rw,cpu"),
                ("/", "/sys/fs/cgroup/cpuset", "cgroup", "rw,cpuset"),
            ),
            "proc/self/cgroup": "3:cpuset:/\n2:cpu:/",
            **files,
        },
    )
    reader = Files(root)
    assert cgroup_limits(reader) == []
    assert any(note.startswith("corrupt") and corrupt in note for note in reader.notes)
    budget = read_budget(reader, Limit("online", 4, "/sys/devices/system/cpu/online"))
    assert budget.cpus == 4 and any(corrupt in note for note in budget.notes)


def test_garbage_mountinfo_and_cgroup_files(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": "nonsense\n1 2 3\n- - -\n40 1 0:9 / /x rw - cgroup2",
            "proc/self/cgroup": "no colons\n::\n0::",
        },
    )
    assert cgroup_limits(Files(root)) == []


def test_cpuset_counts_only_online_cpus(tmp_path):
    root = make_root(
        tmp_path,
        {
            "proc/self/mountinfo": mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")),
            "proc/self/cgroup": "0::/",
            "sys/fs/cgroup/cpuset.cpus.effective": "0-7",
        },
    )
    assert limits_of(root, frozenset({0, 1, 2}))[0][1] == 3
    assert limits_of(root, frozenset({9})) == []  # no online CPU in it: no limit


# ---------------------------------------------------------------- variables


@pytest.mark.parametrize(
    ("environ", "expected", "note"),
    [
        ({}, [], None),
        ({"PYTHON_CPU_COUNT": "3"}, [("PYTHON_CPU_COUNT", 3)], None),
        ({"PINBACKEND_CPU_COUNT": " 2 "}, [("PINBACKEND_CPU_COUNT", 2)], None),
        ({"PYTHON_CPU_COUNT": "default"}, [], None),  # Python 3.13's "no override"
        ({"PYTHON_CPU_COUNT": ""}, [], None),
        ({"PYTHON_CPU_COUNT": "0"}, [], "PYTHON_CPU_COUNT='0' ignored"),
        ({"PINBACKEND_CPU_COUNT": "-2"}, [], "PINBACKEND_CPU_COUNT='-2' ignored"),
        ({"PINBACKEND_CPU_COUNT": "1.5"}, [], "PINBACKEND_CPU_COUNT='1.5' ignored"),
        ({"PINBACKEND_CPU_COUNT": "default"}, [], "PINBACKEND_CPU_COUNT='default' ignored"),
        (
            {"PYTHON_CPU_COUNT": "4", "PINBACKEND_CPU_COUNT": "2"},
            [("PYTHON_CPU_COUNT", 4), ("PINBACKEND_CPU_COUNT", 2)],
            None,
        ),
    ],
)
def test_variables(environ, expected, note):
    limits, notes = variable_limits(environ)
    assert [(limit.source, limit.value) for limit in limits] == expected
    assert all(limit.kind == "variable" for limit in limits)
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(note)


def test_variables_only_lower_the_budget(tmp_path):
    affinity = Limit("affinity", 4, "sched_getaffinity")
    files = Files(tmp_path)
    assert read_budget(files, affinity, {"PINBACKEND_CPU_COUNT": "64"}).cpus == 4
    low = read_budget(files, affinity, {"PINBACKEND_CPU_COUNT": "3", "PYTHON_CPU_COUNT": "2"})
    assert low.cpus == 2
    assert low.reason() == "2 CPUs, set by PYTHON_CPU_COUNT=2"
    assert read_budget(files, affinity, None).limits == (affinity,)  # a snapshot: no variables


# ---------------------------------------------------------------- combining


def test_combining_rounds_down_to_whole_cpus_at_least_one():
    assert Limit("quota", 2.99, "/q").cpus == 2
    assert Limit("quota", 0.25, "/q").cpus == 1
    budget = combine_limits(
        [
            Limit("affinity", 8, "sched_getaffinity"),
            Limit("quota", 2.5, "/a"),
            Limit("quota", 2, "/b"),
        ]
    )
    assert budget.cpus == 2
    assert [limit.source for limit in budget.binding] == ["/a", "/b"]
    assert budget.to_dict() == {
        "cpus": 2,
        "limits": [
            {"kind": "affinity", "value": 8, "source": "sched_getaffinity"},
            {"kind": "quota", "value": 2.5, "source": "/a"},
            {"kind": "quota", "value": 2, "source": "/b"},
        ],
        "notes": [],
    }
    json.dumps(budget.to_dict())


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="needs at least one limit"):
        combine_limits([])
    with pytest.raises(ValueError, match=r"limit kind must be one of affinity.*got 'magic'"):
        Limit("magic", 1, "x")
    with pytest.raises(ValueError, match="above 0 CPUs; got 0"):
        Limit("quota", 0, "x")


@given(st.lists(st.floats(min_value=0.01, max_value=512), min_size=1, max_size=6))
def test_the_smallest_limit_wins(values):
    budget = combine_limits(Limit("quota", value, f"/q{i}") for i, value in enumerate(values))
    assert budget.cpus == max(1, int(min(values)))
    assert all(budget.cpus <= limit.cpus for limit in budget.limits)
    assert budget.binding and isinstance(budget, Budget)


# ---------------------------------------------------------------- from CPUs to cores


def test_within_budget_keeps_whole_cores_and_at_least_one():
    cores = [frozenset({0, 4}), frozenset({1, 5}), frozenset({2}), frozenset({3})]
    assert within_budget(cores, 1) == cores[:1]  # one core of 2 CPUs: at least one core
    assert within_budget(cores, 3) == cores[:1]
    assert within_budget(cores, 4) == cores[:2]
    assert within_budget(cores, 6) == cores
    assert within_budget([], 3) == []


def test_cores_within_fills_one_package_first_and_keeps_siblings_together():
    machine = Topology.uniform(packages=2, cores_per_l3=4, threads_per_core=2)  # 8 cores
    kept = cores_within(machine, machine.allowed, 4)
    assert machine.count_cores(kept) == 2 and len(kept) == 4
    assert all(machine.core_of(cpu) <= kept for cpu in kept)
    assert kept <= machine.packages[0]
    assert cores_within(machine, machine.allowed, 1) == machine.core_of(0)
    assert cores_within(machine, machine.allowed, 100) == machine.allowed
    assert cores_within(machine, machine.packages[1], 2) == machine.core_of(4)
    assert cores_within(machine, (), 2) == frozenset()


@given(
    st.integers(min_value=1, max_value=40),
    st.sets(st.integers(min_value=0, max_value=15), min_size=1),
)
def test_cores_within_never_exceeds_the_budget_but_by_one_core(cpus, usable):
    machine = Topology.uniform(packages=2, cores_per_l3=4, threads_per_core=2)
    kept = cores_within(machine, usable, cpus)
    assert kept <= usable
    assert len(kept) <= cpus or machine.count_cores(kept) == 1
    assert machine.count_cores(kept) >= 1


# ---------------------------------------------------------------- host and command line


def quota_snapshot(root: Path) -> Path:
    return make_root(
        root,
        {
            f"{CPU}/online": "0-3",
            "proc/self/mountinfo": mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")),
            "proc/self/cgroup": "0::/job/step",
            "sys/fs/cgroup/job/cpu.max": "200000 100000",
        },
    )


def test_a_snapshot_budget_comes_from_its_files_not_from_this_process(tmp_path, monkeypatch):
    monkeypatch.setenv("PINBACKEND_CPU_COUNT", "1")
    budget = read_live_budget(quota_snapshot(tmp_path))
    assert budget.cpus == 2
    assert [(limit.kind, limit.source) for limit in budget.limits] == [
        ("online", "/sys/devices/system/cpu/online"),
        ("quota", "/sys/fs/cgroup/job/cpu.max"),
    ]


def test_the_live_budget_reads_the_affinity_mask_and_the_variables(monkeypatch):
    import os

    monkeypatch.setenv("PINBACKEND_CPU_COUNT", "1")
    budget = read_live_budget()
    assert budget.cpus == 1
    assert budget.limits[0] == Limit("affinity", len(os.sched_getaffinity(0)), "sched_getaffinity")
    assert budget.binding[-1] == Limit("variable", 1, "PINBACKEND_CPU_COUNT")
    assert read_live_budget(environ={}).cpus == len(os.sched_getaffinity(0))


def test_info_and_plan_on_a_snapshot_with_a_quota(tmp_path):
    root = str(quota_snapshot(tmp_path))
    info = json.loads(pinbackend_cli("info", "--json", "--root", root, check=True).stdout)
    assert info["budget"]["cpus"] == 2 and info["budget"]["cores"] == 2
    assert info["budget"]["limits"][-1] == {
        "kind": "quota",
        "value": 2.0,
        "source": "/sys/fs/cgroup/job/cpu.max",
    }
    human = pinbackend_cli("info", "--root", root, check=True).stdout
    assert "CPU budget: 2 CPUs, 2 physical cores" in human
    assert "/sys/fs/cgroup/job/cpu.max  <- binds" in human
    plan = json.loads(pinbackend_cli("plan", "--json", "--root", root, check=True).stdout)
    assert plan["workers"] == [[0], [1]]
    assert plan["budget"]["cpus"] == 2
    refused = pinbackend_cli("plan", "-n", "3", "--root", root)
    assert refused.returncode == 2
    assert "the CPU budget is 2 CPUs, set by cgroup quota of 2 CPUs" in refused.stderr
    clamped = pinbackend_cli("plan", "-n", "3", "--oversubscribe", "clamp", "--root", root)
    assert "b = outside the CPU budget" in clamped.stdout
