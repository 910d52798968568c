"""The runner's pool decisions, as pure functions of the job's cores and what is busy."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinbackend.core.planner import PlanError
from pinbackend.core.topology import Topology
from pinbackend.host.holders import LeaseInfo
from pinbackend.runner import RunnerConfig
from pinbackend.runner._plan import decide, host_view

MACHINE = Topology.uniform(packages=2, cores_per_l3=4, threads_per_core=2)  # 8 cores, 16 CPUs


def lease(cpus, pid=999, owner=None):
    return LeaseInfo(f"id{pid}", pid, frozenset(cpus), f"job {pid}", 0.0, "", frozenset(), owner)


DEFAULTS = RunnerConfig()


def view(config=DEFAULTS, leases=(), own=frozenset(), nested=False):
    return host_view(MACHINE, config, leases=tuple(leases), own_pools=own, nested=nested, me=1)


def core_count(cpus):
    return len(MACHINE.restrict(cpus).cores) if cpus else 0


def test_default_is_one_worker_per_free_core_around_other_jobs():
    held = lease({0, 8})  # one physical core (CPU 0 and its sibling 8)
    decision = decide(view(leases=[held]), RunnerConfig(), None, "Pool()")
    assert decision.plan.n_workers == 7 and decision.note is None
    assert not frozenset().union(*decision.plan.slots) & {0, 8}


def test_cores_and_reserve_bound_the_job():
    config = RunnerConfig(
        cores=frozenset(range(4)) | frozenset(range(8, 12)), reserve=frozenset({3, 11})
    )
    decision = decide(view(config), config, None, "Pool()")
    assert frozenset().union(*decision.plan.slots) == {0, 1, 2, 8, 9, 10}


def test_p_replaces_the_size_but_not_inside_pinned_workers():
    config = RunnerConfig(processes=2)
    assert decide(view(config), config, 6, "Pool(6)").plan.n_workers == 2
    nested = view(config, nested=True)
    assert decide(nested, config, 6, "Pool(6)").plan.n_workers == 6


def test_clamp_runs_what_fits_and_says_so():
    held = lease([*range(6), *range(8, 14)])  # 6 of the 8 cores, both CPUs of each
    decision = decide(view(leases=[held]), RunnerConfig(), 6, "Pool(processes=6)")
    assert decision.plan.n_workers == 2
    assert decision.note.startswith("Pool(processes=6) runs 2 workers instead of 6")
    assert decision.note.endswith("pass --oversubscribe error to get an error instead")


def test_error_fails_and_clamp_waits_bounded_with_the_holders_named_when_nothing_is_free():
    full = view(leases=[lease(range(16), pid=4242)])
    with pytest.raises(PlanError, match="by pid 4242 \\(job 4242\\)"):
        decide(full, RunnerConfig(oversubscribe="error"), None, "Pool()")
    decision = decide(full, RunnerConfig(oversubscribe="clamp"), None, "Pool()")
    assert decision.plan is None and decision.bounded
    assert "by pid 4242 (job 4242)" in decision.waiting
    assert "waiting up to the claim timeout (--claim-timeout)" in decision.waiting


def test_a_worker_bigger_than_the_job_is_named_as_such():
    config = RunnerConfig(cores_per_worker=3, cores=frozenset({0, 1, 8, 9}))
    with pytest.raises(PlanError, match=r"a worker needs 3 physical cores.*has only 2"):
        decide(view(config), config, None, "Pool()")


def test_error_policy_refuses_more_workers_than_free_cores():
    config = RunnerConfig(oversubscribe="error")
    with pytest.raises(PlanError, match="asks for 9 worker"):
        decide(view(config), config, 9, "Pool(9)")


def test_wait_policy_waits_for_strangers_only():
    config = RunnerConfig(oversubscribe="wait")
    decision = decide(view(config, leases=[lease(range(16))]), config, 2, "Pool(2)")
    assert decision.plan is None and "waiting for other jobs" in decision.waiting
    # More than the job could ever get: it waits for what can fit, with a note.
    decision = decide(view(config), config, 20, "Pool(20)")
    assert decision.plan.n_workers == 8 and "has only 8 physical cores" in decision.note


def test_own_live_pools_are_never_waited_for_nor_shared_silently():
    own = frozenset(range(16))
    for policy in ("wait", "clamp", "share"):
        config = RunnerConfig(oversubscribe=policy)
        with pytest.raises(PlanError, match="by this program's other pools"):
            decide(view(config, own=own), config, None, "Pool()")


def test_share_policy_shares_other_jobs_cores_when_none_is_free():
    config = RunnerConfig(oversubscribe="share")
    decision = decide(view(config, leases=[lease(range(16))]), config, 3, "Pool(3)")
    assert decision.shared_with_others and decision.plan.n_workers == 3


def test_my_own_workers_leases_are_stray_not_strangers():
    mine = lease({0, 8}, pid=50, owner=1)
    cores = view(leases=[mine])
    assert cores.stray == {0, 8} and cores.strangers == frozenset()


@settings(max_examples=150, deadline=None)
@given(
    held=st.frozensets(st.integers(0, 15)),
    own=st.frozensets(st.integers(0, 15)),
    requested=st.none() | st.integers(1, 12),
    processes=st.none() | st.integers(1, 12),
    per_worker=st.none() | st.integers(1, 3),
    policy=st.sampled_from(["clamp", "error", "share", "wait"]),
)
def test_a_plan_never_overlaps_what_it_must_not(
    held, own, requested, processes, per_worker, policy
):
    config = RunnerConfig(processes=processes, cores_per_worker=per_worker, oversubscribe=policy)
    cores = view(config, leases=[lease(held)] if held else [], own=own)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # deciding is pure: it never warns
            decision = decide(cores, config, requested, "Pool()")
    except PlanError:
        return
    if decision.plan is None:
        assert policy == "wait" or (policy == "clamp" and decision.bounded)
        return
    used = frozenset().union(*decision.plan.slots)
    assert not used & own  # never this program's live pools
    if decision.shared_with_others:
        assert policy == "share" and core_count(cores.free) < (per_worker or 1)
    else:
        assert not used & held  # never another job's cores, unless sharing was asked
    if not decision.plan.shared:
        slots = decision.plan.slots
        assert sum(len(s) for s in slots) == len(used)  # disjoint
    if policy in ("clamp", "error", "wait") and not decision.plan.shared:
        asked = processes or requested
        assert asked is None or decision.plan.n_workers <= asked
