"""The one decision (:func:`pinbackend.host.policy.decide`), tested directly: pure, on
synthetic machines and on hwloc's snapshots, with hand-made holders.

Every policy (clamp, wait, share, error) meets every kind of request: a pool of a given size,
a pool of as many as fit, the runner's ``-p``, a pool nested in a pinned worker, one worker
pinning itself (``run -n``, a Dask worker) without and with a group whose members hold every
slot, and an explicit set of CPUs (``run --cores``).
"""

from __future__ import annotations

import warnings

import pytest
from conftest import SNAPSHOTS
from hypothesis import given, settings
from hypothesis import strategies as st
from test_planner import topologies

from pinbackend.core.planner import PlanError
from pinbackend.core.topology import Topology
from pinbackend.host.holders import LeaseInfo
from pinbackend.host.leases import LeaseConflict
from pinbackend.host.machine import read_topology
from pinbackend.host.options import OVERSUBSCRIBE_POLICIES, PinOptions
from pinbackend.host.policy import (
    COMMAND_LINE,
    KEYWORDS,
    ClaimFailed,
    Decision,
    Request,
    decide,
)
from pinbackend.host.view import host_view

POLICIES = ("clamp", "wait", "share", "error")
#: Four cores, CPUs 0-3, one package.
MACHINE = Topology.uniform(cores_per_l3=4)
#: This process, as the view's ``me`` (the owner its pools' workers record).
ME = 100
#: A Dask cluster's workers on this host: the group of a one-worker request.
MEMBER = "dask worker tcp://w of scheduler tcp://s"


def is_member(info: LeaseInfo) -> bool:
    return info.command.startswith("dask worker ")


def lease(cpus, pid=7, *, command=None, owner=None, shared=()) -> LeaseInfo:
    """A live lease: another job's (``job PID``) unless ``owner`` or ``command`` say else."""
    command = command or f"job {pid}"
    return LeaseInfo(f"id{pid}", pid, frozenset(cpus), command, 0.0, "", frozenset(shared), owner)


# The requests, by kind.
POOL = Request("a pool", workers=4)
AS_MANY = Request("a pool")
PROCESSES = Request("Pool(2)", workers=2, processes=4, spelling=COMMAND_LINE)
ONE = Request("a worker", workers=1, one_worker=True)
EXPLICIT = Request("run", cores=frozenset({0, 1}), spelling=COMMAND_LINE)


def decided(policy, request, *leases, nested=False, topology=MACHINE, group=None, **options):
    """``decide`` on a view of ``topology`` with ``leases`` held, under ``policy``."""
    options = PinOptions(oversubscribe=policy, **options)
    view = host_view(topology, options, nested=nested, me=ME, leases=leases, group=group)
    return decide(view, options, request)


def slots(decision: Decision) -> list[list[int]]:
    return [sorted(slot) for slot in decision.plan.slots]


def assert_waits(decision: Decision, policy: str, *, bounded: bool, says: str) -> None:
    """No slot yet: the claimant waits (bounded or not) for the reason ``says``."""
    assert decision.plan is None and says in decision.waiting, decision
    assert (decision.bounded, decision.policy) == (bounded, policy)
    assert decision.shortage and not decision.shared_with_others


# --- A pool, with another job on one of its cores -------------------------------------------

PARTLY = lease({0})  # another job holds CPU 0 of 0-3


def test_clamp_runs_the_workers_that_fit_and_says_so():
    decision = decided("clamp", POOL, PARTLY)
    assert slots(decision) == [[1], [2], [3]] and not decision.plan.shared
    assert decision.note == (
        "a pool runs 3 workers instead of 4: only 3 physical cores are free (CPUs 1-3); "
        "pass oversubscribe='error' to get an error instead"
    )
    # Another job's cores caused the clamp: they may free up (decide_waiting's grace).
    assert decision.held_by_others and decision.waiting is None
    assert not decision.shared_with_others


def test_a_pool_clamped_by_other_jobs_may_grow_into_their_cores_and_only_theirs():
    """Grow back: the slots it could not have, up to the workers it asked for; none where
    its own policy or request leaves nothing to grow (error, share, wait, one worker)."""
    assert decided("clamp", POOL, PARTLY).grow == (frozenset({0}),)
    assert decided("clamp", AS_MANY, PARTLY).grow == (frozenset({0}),)
    two = Request("a pool", workers=2)
    assert decided("clamp", two, PARTLY).grow == ()  # 2 fit: nothing to grow into
    held = decided("clamp", POOL, lease({0, 1}), cores_per_worker=2)
    assert slots(held) == [[2, 3]] and held.grow == (frozenset({0, 1}),)
    # Its own workers' cores are its own already; other policies keep their meaning.
    assert decided("clamp", POOL, lease({0}, owner=ME)).grow == ()
    assert decided("share", POOL, PARTLY).grow == ()
    assert decided("clamp", ONE, lease({0, 1, 2, 3})).grow == ()
    # Inside a worker's slot a pool never grows: the slot is all it has.
    assert decided("clamp", POOL, PARTLY, nested=True).grow == ()


def test_wait_waits_for_every_worker_without_a_bound():
    decision = decided("wait", POOL, PARTLY)
    assert_waits(decision, "wait", bounded=False, says="waiting for other jobs to end")
    assert "taken: CPUs 0 by pid 7 (job 7)" in decision.waiting


def test_share_with_free_cores_shares_them_among_its_own_workers():
    decision = decided("share", POOL, PARTLY)
    assert decision.plan.shared and decision.plan.n_workers == 4
    assert set().union(*slots(decision)) == {1, 2, 3}  # never the other job's core
    assert not decision.shared_with_others


def test_error_refuses_naming_the_holder_and_the_remedies():
    with pytest.raises(PlanError) as refused:
        decided("error", POOL, PARTLY)
    assert not isinstance(refused.value, ClaimFailed)  # a refusal, not a failed claim
    assert str(refused.value) == (
        "a pool asks for 4 workers of 1 core but only 3 physical cores are free (CPUs 1-3; "
        "taken: CPUs 0 by pid 7 (job 7)); use n_jobs=3, or oversubscribe='clamp', "
        "oversubscribe='wait' or oversubscribe='share'"
    )


@pytest.mark.parametrize("policy", POLICIES)
def test_as_many_as_fit_takes_the_free_cores_whatever_the_policy(policy):
    decision = decided(policy, AS_MANY, PARTLY)
    assert slots(decision) == [[1], [2], [3]] and decision.note is None
    assert decision.held_by_others  # the job has more: they may free up at once


def test_as_many_as_fit_on_a_free_host_is_not_held_by_others():
    decision = decided("clamp", AS_MANY, lease({0}, owner=ME))  # its own worker's lease
    assert slots(decision) == [[0], [1], [2], [3]] and not decision.held_by_others


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        ("clamp", "Pool(2) runs 3 workers instead of 4 (-p 4)"),
        ("wait", "Pool(2) asks for 4 workers (-p 4) of 1 core"),
        ("share", None),
        ("error", "use -p 3, or --oversubscribe clamp, --oversubscribe wait or --oversubscribe"),
    ],
)
def test_the_runners_p_replaces_the_size_and_is_named_in_its_spelling(policy, outcome):
    if policy == "error":
        with pytest.raises(PlanError, match=outcome):
            decided(policy, PROCESSES, PARTLY)
        return
    decision = decided(policy, PROCESSES, PARTLY)
    if policy == "share":
        assert decision.plan.n_workers == 4 and decision.plan.shared
    elif policy == "wait":
        assert decision.plan is None and decision.waiting.startswith(outcome)
    else:
        assert decision.note.startswith(outcome) and "--oversubscribe error" in decision.note


# --- A pool on a full host ------------------------------------------------------------------

FULL = lease({0, 1, 2, 3})


@pytest.mark.parametrize("request_", [POOL, AS_MANY], ids=["pool", "as-many"])
def test_on_a_full_host_clamp_waits_up_to_the_claim_timeout(request_):
    decision = decided("clamp", request_, FULL)
    assert_waits(decision, "clamp", bounded=True, says="waiting up to the claim timeout")
    assert decision.shortage.startswith("a pool asks for 4 workers of 1 core but only 0")
    assert (
        decision.remedy == "use oversubscribe='share', a longer claim_timeout, or free some cores"
    )


def test_on_a_full_host_clamp_names_the_runners_flags():
    decision = decided("clamp", PROCESSES, FULL)
    assert "(--claim-timeout)" in decision.waiting
    assert (
        decision.remedy == "use --oversubscribe share, a longer --claim-timeout, or free some cores"
    )


@pytest.mark.parametrize("request_", [POOL, AS_MANY, PROCESSES], ids=["pool", "as-many", "p"])
def test_on_a_full_host_share_shares_the_other_jobs_cores(request_):
    decision = decided("share", request_, FULL)
    assert slots(decision) == [[0], [1], [2], [3]] and not decision.plan.shared
    assert decision.shared_with_others and decision.note is None


@pytest.mark.parametrize("request_", [POOL, AS_MANY], ids=["pool", "as-many"])
def test_on_a_full_host_wait_and_error_do_as_they_say(request_):
    assert_waits(decided("wait", request_, FULL), "wait", bounded=False, says="other jobs to end")
    with pytest.raises(PlanError, match=r"by pid 7 \(job 7\)\); use n_jobs=1, or oversubscribe="):
        decided("error", request_, FULL)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_pool_never_waits_for_nor_shares_its_own_programs_pools(policy):
    options = PinOptions(oversubscribe=policy)
    view = host_view(MACHINE, options, me=ME, own_pools=frozenset(range(4)))
    with pytest.raises(PlanError, match="are all used by CPUs 0-3 by this program's other pools"):
        decide(view, options, POOL)


def test_a_pool_plans_over_its_own_workers_leases():
    # The program's own workers (reused or replaced), never waited for.
    decision = decided("error", POOL, lease({0, 1, 2, 3}, pid=50, owner=ME))
    assert slots(decision) == [[0], [1], [2], [3]] and not decision.held_by_others


def test_wait_asks_for_no_more_than_the_job_could_ever_get():
    decision = decided("wait", Request("a pool", workers=6), PARTLY)
    assert decision.plan is None and decision.note.startswith("a pool runs 4 workers instead of 6")
    decision = decided("wait", Request("a pool", workers=6))
    assert decision.plan.n_workers == 4 and "the job has only 4 physical cores" in decision.note


def test_a_worker_bigger_than_the_job_is_refused_by_every_policy():
    for policy in POLICIES:
        with pytest.raises(PlanError, match=r"a worker needs 5 physical cores .* has only 4"):
            decided(policy, POOL, cores_per_worker=5)


def test_an_unknown_reserved_cpu_is_refused():
    with pytest.raises(PlanError, match="reserve names CPUs 9 that this machine does not have"):
        decided("clamp", POOL, reserve=frozenset({9}))


# --- A pool nested in a pinned worker -------------------------------------------------------

SLOT = Topology.uniform(cores_per_l3=4, allowed={0, 1})  # the worker's slot: CPUs 0-1


@pytest.mark.parametrize("policy", POLICIES)
def test_a_nested_pool_always_clamps_to_its_workers_slot(policy):
    # Whatever the policy, the size and the reserve: it never leaves the slot, never waits,
    # never shares with others, never fails for want of cores.
    options = {"cores_per_worker": 3, "reserve": frozenset({0})}
    decision = decided(policy, POOL, nested=True, topology=SLOT, **options)
    assert slots(decision) == [[0], [1]]
    assert decision.note.startswith("a pool runs 2 workers instead of 4: only 2 physical")
    assert decision.policy == "clamp" and not decision.shared_with_others
    # The runner's -p does not reach inside a pinned worker either: its own size counts.
    decision = decided(policy, PROCESSES, nested=True, topology=SLOT, **options)
    assert slots(decision) == [[0], [1]] and decision.note is None


# --- One worker pinning itself (run -n, a Dask worker) --------------------------------------


def test_one_worker_takes_a_free_slot_of_its_size():
    decision = decided("clamp", ONE, PARTLY, cores_per_worker=2)
    assert slots(decision) == [[1, 2]] and decision.note is None


@pytest.mark.parametrize("policy", ["clamp", "error"])
def test_one_worker_waits_bounded_under_clamp_and_error(policy):
    # It cannot run with fewer workers: where a pool is clamped or refused, it waits.
    decision = decided(policy, ONE, FULL)
    assert_waits(decision, policy, bounded=True, says="waiting for a slot of 1 physical core")
    assert "held by CPUs 0-3 by pid 7 (job 7)" in decision.waiting
    assert decision.remedy == "raise the claim timeout, share, or wait for those jobs"


def test_one_worker_waits_without_a_bound_under_wait():
    assert_waits(decided("wait", ONE, FULL), "wait", bounded=False, says="waiting for a slot")


def test_one_worker_shares_the_least_crowded_slot_under_share():
    crowded = [lease({0, 1}, pid=7), lease({0, 1}, pid=8, shared={0, 1}), lease({2, 3}, pid=9)]
    decision = decided("share", ONE, *crowded, cores_per_worker=2)
    assert slots(decision) == [[2, 3]] and decision.shared_with_others


@pytest.mark.parametrize("policy", POLICIES)
def test_one_worker_that_can_never_fit_is_refused_at_once(policy):
    with pytest.raises(PlanError, match=r"a slot of 5 physical cores cannot fit: .* at most 4"):
        decided(policy, ONE, cores_per_worker=5)
    with pytest.raises(PlanError, match="every CPU this process may use is reserved"):
        decided(policy, ONE, reserve=frozenset(range(4)))


MEMBERS = (lease({0, 1}, pid=11, command=MEMBER), lease({2, 3}, pid=12, command=MEMBER))


@pytest.mark.parametrize("policy", ["clamp", "wait", "error"])
def test_one_worker_whose_group_holds_every_slot_fails_at_once_by_policy(policy):
    # Waiting for its own group's members cannot help, even under wait.
    with pytest.raises(ClaimFailed) as failed:
        decided(policy, ONE, *MEMBERS, group=is_member, cores_per_worker=2)
    error = failed.value
    assert isinstance(error, LeaseConflict) and isinstance(error, PlanError)
    assert error.policy == policy and error.busy == frozenset(range(4))
    assert [holder.pid for holder in error.holders] == [11, 12]
    assert str(error) == (
        "this host has room for 2 slots of 2 physical cores, and 2 of the group's own hold them all"
    )


def test_one_worker_whose_group_holds_every_slot_shares_under_share():
    decision = decided("share", ONE, *MEMBERS, group=is_member, cores_per_worker=2)
    assert decision.plan.n_workers == 1 and decision.shared_with_others


def test_one_worker_waits_for_another_job_beside_its_group():
    held = (MEMBERS[0], lease({2}, pid=13))
    decision = decided("clamp", ONE, *held, group=is_member, cores_per_worker=2)
    assert_waits(decision, "clamp", bounded=True, says="waiting for a slot of 2 physical cores")
    # The same holders without a group: the members count as other jobs, worth waiting for.
    decision = decided("clamp", ONE, *MEMBERS, cores_per_worker=2)
    assert_waits(decision, "clamp", bounded=True, says="by pid 11 (dask worker")


# --- An explicit set of CPUs (run --cores) --------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_explicit_cpus_that_are_free_are_decided_as_they_are(policy):
    decision = decided(policy, EXPLICIT, lease({2, 3}))
    assert slots(decision) == [[0, 1]] and not decision.shared_with_others


@pytest.mark.parametrize(
    ("policy", "bounded"), [("clamp", True), ("wait", False)], ids=["clamp", "wait"]
)
def test_explicit_cpus_that_are_held_are_waited_for(policy, bounded):
    decision = decided(policy, EXPLICIT, PARTLY)
    assert_waits(decision, policy, bounded=bounded, says="CPUs 0 are held by pid 7 (job 7)")
    assert decision.remedy == "pick other CPUs, wait for those jobs, or allow sharing"


def test_explicit_cpus_that_are_held_are_shared_under_share():
    decision = decided("share", EXPLICIT, PARTLY)
    assert slots(decision) == [[0, 1]] and decision.shared_with_others


def test_explicit_cpus_that_are_held_are_refused_under_error():
    with pytest.raises(ClaimFailed) as failed:
        decided("error", EXPLICIT, PARTLY, lease({3}, pid=8))
    error = failed.value
    assert (error.policy, error.busy) == ("error", frozenset({0}))
    assert [holder.pid for holder in error.holders] == [7]  # only who holds these CPUs
    assert str(error) == (
        "CPUs 0 are held by pid 7 (job 7). Pick other CPUs, wait for those jobs, or allow sharing"
    )


def test_explicit_cpus_that_are_not_allowed_are_refused_by_every_policy():
    cpuset = Topology.uniform(cores_per_l3=4, allowed={2, 3})
    for policy in POLICIES:
        with pytest.raises(PlanError, match=r"CPUs 0-1 are not allowed here \(allowed CPUs: 2-3\)"):
            decided(policy, EXPLICIT, topology=cpuset)


def test_a_claim_failure_travels_whole():
    import pickle

    error = ClaimFailed("held", frozenset({1}), [PARTLY], "wait")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.busy, copy.holders, copy.policy) == ("held", {1}, (PARTLY,), "wait")


# --- hwloc snapshots ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def machines(snapshot_root) -> dict[str, Topology]:
    """Every snapshot's topology, read once."""
    return {name: read_topology(snapshot_root(name)) for name in SNAPSHOTS}


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_on_each_snapshot_a_pool_clamps_around_a_job_on_its_first_core(name, machines):
    topology = machines[name]
    usable = topology.restrict(topology.allowed)
    first = usable.cores[0]
    n_cores = len(usable.cores)
    decision = decided("clamp", Request("a pool", workers=n_cores), lease(first), topology=topology)
    if n_cores == 1:
        assert decision.plan is None and decision.bounded
        return
    assert decision.plan.n_workers == n_cores - 1 and decision.held_by_others
    assert set().union(*decision.plan.slots) == topology.allowed - first
    for slot in decision.plan.slots:  # one whole core each, SMT siblings together
        assert slot in usable.cores


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_on_each_snapshot_a_group_full_of_its_members_fails_at_once(name, machines):
    topology = machines[name]
    members = [
        lease(core, pid=1000 + i, command=f"{MEMBER}{i}")
        for i, core in enumerate(topology.restrict(topology.allowed).cores)
    ]
    with pytest.raises(ClaimFailed, match="of the group's own hold them all"):
        decided("clamp", ONE, *members, topology=topology, group=is_member)


# --- Properties -----------------------------------------------------------------------------


@st.composite
def scenes(draw, topology_strategy):
    """A view of a machine (other jobs, this program's workers and pools, a group), the
    options and a request of any kind."""
    topology = draw(topology_strategy)
    cpus = sorted(topology.online)
    some = st.frozensets(st.sampled_from(cpus), min_size=1)
    kind = draw(st.sampled_from(["pool", "processes", "one", "explicit"]))
    nested = kind in ("pool", "processes") and draw(st.booleans())  # only pools nest
    leases = []
    for pid in range(draw(st.integers(0, 3))):
        held = draw(some)
        shared = held if draw(st.booleans()) else frozenset()
        command = MEMBER if draw(st.booleans()) else f"job {pid}"
        owner = ME if draw(st.integers(0, 3)) == 0 else None
        leases.append(lease(held, pid=10 + pid, command=command, owner=owner, shared=shared))
    own = frozenset() if nested or kind != "pool" else draw(st.frozensets(st.sampled_from(cpus)))
    spelling = draw(st.sampled_from([COMMAND_LINE, KEYWORDS]))
    workers = draw(st.none() | st.integers(1, 6))
    request = {
        "pool": Request("a pool", workers=workers, spelling=spelling),
        "processes": Request("Pool()", workers=workers, processes=draw(st.integers(1, 6))),
        "one": Request("a worker", workers=1, one_worker=True),
        "explicit": Request("run", cores=draw(some), spelling=COMMAND_LINE),
    }[kind]
    sizes = st.integers(1, 3)  # one worker pinning itself always asks for its size
    options = PinOptions(
        oversubscribe=draw(st.none() | st.sampled_from(OVERSUBSCRIBE_POLICIES)),
        cores_per_worker=draw(sizes if kind == "one" else st.none() | sizes),
        reserve=draw(st.frozensets(st.sampled_from(cpus), max_size=2)),
    )
    view = host_view(
        topology,
        options,
        nested=nested,
        me=ME,
        leases=tuple(leases),
        own_pools=own,
        group=is_member if draw(st.booleans()) else None,
    )
    return view, options, request


def check_decision(view, options, request) -> None:
    """What every decision keeps to, whatever the machine, the holders and the request."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # deciding is pure: it never warns
        try:
            decision = decide(view, options, request)
        except ClaimFailed as failure:
            assert failure.policy in POLICIES and failure.busy and failure.holders
            assert request.one_worker or request.cores is not None
            return
        except PlanError:
            return
    assert decide(view, options, request) == decision  # and it is the same every time
    policy = "clamp" if view.nested else options.policy("clamp")
    if decision.plan is None:
        assert decision.waiting and decision.shortage
        assert decision.policy == policy
        assert decision.bounded == (policy != "wait")
        return
    used = frozenset().union(*decision.plan.slots)
    if request.cores is not None:
        assert decision.plan.slots == (request.cores,)
        assert decision.shared_with_others == bool(request.cores & view.strangers)
        return
    assert used <= view.usable  # never a reserved CPU, never outside the job or the slot
    topology = view.topology.restrict(view.topology.allowed)
    # Whole cores of what the slots were planned on: the free CPUs, or, shared with other
    # jobs, every CPU the job could have.
    planned_on = view.reachable if decision.shared_with_others else view.free
    if request.one_worker and decision.shared_with_others:
        planned_on = view.usable  # the least crowded slot of all
    for slot in decision.plan.slots:
        for core in topology.cores:
            assert not core & slot or core & planned_on <= slot  # whole cores
    if not decision.shared_with_others:
        assert not used & view.strangers  # never another process's held CPUs
        assert not used & view.own  # nor this program's running pools'
        # Nor the other half of a physical core they hold part of (SMT siblings share it).
        held = view.strangers | view.own
        assert not any(core & used and core & held for core in topology.cores)
    else:  # asked for, and only where no slot of the claimant's size is free
        size = 1 if view.nested else options.cores_per_worker or 1
        assert policy == "share" and topology.count_cores(view.free) < size
    if not decision.plan.shared:
        assert sum(map(len, decision.plan.slots)) == len(used)  # disjoint
    asked = request.workers
    if not view.nested and request.processes is not None:
        asked = request.processes
    if request.one_worker:
        size = options.cores_per_worker or 1
        assert decision.plan.n_workers == 1 and topology.count_cores(used) == size
    elif asked is not None:
        assert decision.plan.n_workers <= asked  # never more workers than asked
        assert decision.plan.n_workers + len(decision.grow) <= asked  # nor once grown
    # Grow back: slots on the job's CPUs, never its own slots' CPUs, disjoint.
    grown = frozenset().union(*decision.grow)
    assert grown <= view.usable and not grown & used
    assert sum(map(len, decision.grow)) == len(grown)
    assert not decision.grow or (policy == "clamp" and decision.held_by_others)
    if decision.held_by_others:  # other jobs hold some of its CPUs, or part of their cores
        assert view.usable & view.whole_cores(view.strangers)


@settings(max_examples=300, deadline=None)
@given(scenes(topologies()))
def test_every_decision_keeps_to_its_view_on_any_machine(scene):
    check_decision(*scene)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_every_decision_keeps_to_its_view_on_the_snapshots(machines, data):
    topology = machines[data.draw(st.sampled_from(SNAPSHOTS))]
    check_decision(*data.draw(scenes(st.just(topology))))
