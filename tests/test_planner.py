"""Planner properties on generated topologies (hypothesis) and on hand-made machines."""

from __future__ import annotations

import random
import warnings
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinbackend.core.planner import PlanError, plan_slots
from pinbackend.core.topology import Topology


@st.composite
def topologies(draw):
    """Regular machines with shuffled CPU numbers, optional hybrid kinds and a random cpuset."""
    packages = draw(st.integers(1, 3))
    numa_per_package = draw(st.integers(1, 2))
    l3_per_numa = draw(st.integers(1, 2))
    cores_per_l3 = draw(st.integers(1, 4))
    threads = draw(st.integers(1, 2))
    hybrid = draw(st.booleans())
    n_cores = packages * numa_per_package * l3_per_numa * cores_per_l3
    numbering = draw(st.permutations(range(n_cores * threads)))
    cores = [frozenset(numbering[c * threads + t] for t in range(threads)) for c in range(n_cores)]

    def union(start, count):
        return frozenset().union(*cores[start : start + count])

    per_package = n_cores // packages
    per_numa = per_package // numa_per_package
    kinds = ()
    if hybrid and cores_per_l3 > 1:
        # The first core of every L3 group is a P-core, the others E-cores.
        p_cores = union(0, 0).union(*cores[::cores_per_l3])
        kinds = (frozenset().union(*cores) - p_cores, p_cores)
    online = frozenset(numbering)
    allowed = draw(
        st.sets(st.sampled_from(sorted(online)), min_size=1).map(frozenset) | st.just(online)
    )
    return Topology(
        online=online,
        allowed=allowed,
        packages={p: union(p * per_package, per_package) for p in range(packages)},
        numa_nodes={n: union(n * per_numa, per_numa) for n in range(packages * numa_per_package)},
        cores=cores,
        l3_groups=[
            union(g * cores_per_l3, cores_per_l3)
            for g in range(packages * numa_per_package * l3_per_numa)
        ],
        cpu_kinds=kinds,
    )


def usable_cores(topology, usable):
    return [core & usable for core in topology.cores if core & usable]


def cores_in(topology, slot):
    return sum(1 for core in topology.cores if core & slot)


def levels(topology):
    return {
        "package": list(topology.packages.values()),
        "numa": list(topology.numa_nodes.values()),
        "l3": list(topology.l3_groups),
        "kind": list(topology.cpu_kinds),
    }


def straddles(slot, groups):
    return sum(1 for group in groups if group & slot) > 1


@st.composite
def plan_requests(draw):
    topology = draw(topologies())
    reserve = draw(st.sets(st.sampled_from(sorted(topology.online)), max_size=2))
    usable = topology.allowed - reserve
    n_cores = len(usable_cores(topology, usable))
    if n_cores == 0:
        reserve = set()
        n_cores = len(usable_cores(topology, topology.allowed))
    n_workers = draw(st.integers(1, n_cores))
    return topology, frozenset(reserve), n_workers


@settings(max_examples=300, deadline=None)
@given(plan_requests())
def test_slots_are_disjoint_balanced_whole_cores_inside_the_usable_set(request):
    topology, reserve, n_workers = request
    plan = plan_slots(topology, n_workers, reserve=reserve)
    usable = topology.allowed - reserve
    assert plan.usable == usable
    assert len(plan.slots) == n_workers
    seen = set()
    for slot in plan.slots:
        assert slot, "empty slot"
        assert slot <= usable
        assert not slot & reserve
        assert not slot & seen, "slots overlap"
        seen |= slot
    # Every usable CPU is handed out when no size is fixed.
    assert seen == usable
    sizes = [cores_in(topology, slot) for slot in plan.slots]
    assert max(sizes) - min(sizes) <= 1
    for core in usable_cores(topology, usable):
        owners = [i for i, slot in enumerate(plan.slots) if slot & core]
        assert len(owners) == 1 and core <= plan.slots[owners[0]], "SMT siblings split"


@settings(max_examples=300, deadline=None)
@given(topologies(), st.integers(1, 4), st.data())
def test_fixed_size_slots_are_disjoint_and_exactly_sized(topology, size, data):
    n_cores = len(usable_cores(topology, topology.allowed))
    if size > n_cores:
        with pytest.raises(PlanError, match="cores_per_worker"):
            plan_slots(topology, cores_per_worker=size)
        return
    n_workers = data.draw(st.integers(1, n_cores // size) | st.none())
    plan = plan_slots(topology, n_workers, cores_per_worker=size)
    assert len(plan.slots) == (n_cores // size if n_workers is None else n_workers)
    seen = set()
    for slot in plan.slots:
        assert cores_in(topology, slot) == size
        assert not slot & seen
        seen |= slot
        assert slot <= topology.allowed


@settings(max_examples=300, deadline=None)
@given(topologies(), st.data())
def test_no_slot_straddles_a_group_when_the_sizes_allow_it(topology, data):
    usable = topology.allowed
    view = topology.restrict(usable)
    finest = Counter()
    for core in view.cores:
        cpu = min(core)
        finest[
            tuple(tuple(i for i, g in enumerate(gs) if cpu in g) for gs in levels(view).values())
        ] += 1
    size = data.draw(st.integers(1, max(finest.values())))
    whole_slots = sum(count // size for count in finest.values())
    if whole_slots == 0:
        return
    n_workers = data.draw(st.integers(1, whole_slots))
    plan = plan_slots(topology, n_workers, cores_per_worker=size)
    for slot in plan.slots:
        for name, groups in levels(view).items():
            assert not straddles(slot, groups), f"slot {sorted(slot)} straddles {name} groups"


@settings(max_examples=200, deadline=None)
@given(topologies())
def test_full_plan_with_aligned_groups_never_straddles(topology):
    view = topology.restrict(topology.allowed)
    group_sizes = Counter()
    for core in view.cores:
        cpu = min(core)
        group_sizes[
            tuple(frozenset(g for g in gs if cpu in g) for gs in levels(view).values())
        ] += 1
    for size in range(1, len(view.cores) + 1):
        if all(count % size == 0 for count in group_sizes.values()):
            plan = plan_slots(topology, len(view.cores) // size)
            for slot in plan.slots:
                for name, groups in levels(view).items():
                    assert not straddles(slot, groups), f"size {size} straddles {name}"


@settings(max_examples=200, deadline=None)
@given(topologies(), st.data())
def test_slots_spread_evenly_over_equal_packages(topology, data):
    if topology.allowed != topology.online:
        return
    size = data.draw(st.integers(1, min(cores_in(topology, p) for p in topology.packages.values())))
    per_package = [cores_in(topology, p) // size for p in topology.packages.values()]
    n_workers = data.draw(st.integers(1, sum(per_package)))
    plan = plan_slots(topology, n_workers, cores_per_worker=size)
    counts = [
        sum(1 for slot in plan.slots if slot <= package) for package in topology.packages.values()
    ]
    assert sum(counts) == n_workers, "a slot straddles packages although each can hold it"
    assert max(counts) - min(counts) <= 1


@settings(max_examples=100, deadline=None)
@given(plan_requests())
def test_plan_is_deterministic(request):
    topology, reserve, n_workers = request
    again = Topology(
        online=set(topology.online),
        allowed=set(topology.allowed),
        packages=dict(reversed(list(topology.packages.items()))),
        numa_nodes=dict(topology.numa_nodes),
        cores=list(reversed(topology.cores)),
        l3_groups=list(reversed(topology.l3_groups)),
        cpu_kinds=topology.cpu_kinds,
    )
    first = plan_slots(topology, n_workers, reserve=reserve)
    assert plan_slots(again, n_workers, reserve=reserve) == first


def test_four_workers_on_two_sockets_take_two_each():
    machine = Topology.uniform(packages=2, cores_per_l3=8, threads_per_core=2)
    plan = plan_slots(machine, 4)
    sockets = list(machine.packages.values())
    assert [sum(slot <= s for slot in plan.slots) for s in sockets] == [2, 2]
    # Hyper-threads stay with their core: CPU c and c + 16 are siblings.
    for slot in plan.slots:
        assert {cpu % 16 for cpu in slot} == {cpu - 16 for cpu in slot if cpu >= 16}


def test_too_many_workers_is_an_error_by_default():
    machine = Topology.uniform(cores_per_l3=2)
    expected = r"3 workers of 1 core need 3 cores but only 2 are usable; use at most 2 workers"
    with pytest.raises(PlanError, match=expected):
        plan_slots(machine, 3)


def test_sharing_is_opt_in_reported_as_a_fact_and_stays_balanced():
    machine = Topology.uniform(cores_per_l3=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pure planner never warns: callers report
        plan = plan_slots(machine, 5, oversubscribe="share")
    assert plan.shared and plan.requested == 5 and plan.n_distinct == 2
    assert sorted(Counter(plan.slots).values()) == [2, 3]
    assert plan.sharing_note().startswith("5 workers asked for but only 2 disjoint core sets")
    assert plan_slots(machine, 2).sharing_note() is None


def test_core_imports_nothing_outside_core():
    import ast
    from pathlib import Path

    import pinbackend.core

    folder = Path(pinbackend.core.__file__).parent
    outside = []
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level > 1 or (node.level == 0 and (node.module or "").startswith("pinbackend"))
            ):
                outside.append(f"{path.name}: {node.module}")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
                if any(n.split(".")[0] in ("warnings", "psutil", "threadpoolctl") for n in names):
                    outside.append(f"{path.name}: {names}")
    assert len(list(folder.glob("*.py"))) >= 6
    assert outside == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_workers": 0}, "n_workers must be a positive integer or None; got 0"),
        ({"n_workers": -1}, "n_workers must be a positive integer"),
        ({"n_workers": 2.5}, "got 2.5"),
        ({"cores_per_worker": 0}, "cores_per_worker must be a positive integer"),
        ({"cores_per_worker": 3}, "cores_per_worker=3 but only 2 usable cores"),
        ({"reserve": {7}}, "reserve names CPUs 7 that this machine does not have online"),
        ({"reserve": {0, 1}}, "no usable CPU"),
        ({"oversubscribe": "maybe"}, "must be one of error, clamp, share; got 'maybe'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_slots(Topology.uniform(cores_per_l3=2), **kwargs)


def test_clamping_plans_only_the_workers_that_fit():
    machine = Topology.uniform(cores_per_l3=4)
    assert plan_slots(machine, 9, oversubscribe="clamp").n_workers == 4
    plan = plan_slots(machine, 3, cores_per_worker=2, oversubscribe="clamp")
    assert plan.slots == (frozenset({0, 1}), frozenset({2, 3}))
    assert not plan.shared


def test_reserved_and_busy_cpus_are_never_used():
    machine = Topology.uniform(cores_per_l3=4)
    plan = plan_slots(machine, reserve={3}, busy={0})
    assert plan.slots == (frozenset({1}), frozenset({2}))


def test_large_machine_plans_quickly():
    machine = Topology.uniform(
        packages=2, numa_per_package=4, l3_per_numa=2, cores_per_l3=8, threads_per_core=2
    )
    rng = random.Random(0)
    for _ in range(20):
        plan = plan_slots(machine, rng.randint(1, 128))
        assert len(set().union(*plan.slots)) == 256


def test_count_cores_counts_physical_cores_touched_by_the_cpus():
    smt = Topology.uniform(cores_per_l3=4, threads_per_core=2)  # cores {0,4} {1,5} {2,6} {3,7}
    assert smt.count_cores({0, 4}) == 1  # two SMT siblings are one core
    assert smt.count_cores({0, 1, 5}) == 2
    assert smt.count_cores(range(8)) == 4
    assert smt.count_cores(()) == 0
