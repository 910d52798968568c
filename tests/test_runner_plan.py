"""The runner's pool decisions, as pure functions of the job's cores and what is busy: what
only the runner adds to the one decision (``--cores``, its view of its own workers). The
policies themselves are tested on ``decide`` directly (test_policy)."""

from __future__ import annotations

from pinbackend.core.topology import Topology
from pinbackend.host.holders import LeaseInfo
from pinbackend.runner import RunnerConfig
from pinbackend.runner._plan import decide, host_view

MACHINE = Topology.uniform(packages=2, cores_per_l3=4, threads_per_core=2)  # 8 cores, 16 CPUs


def lease(cpus, pid=999, owner=None):
    return LeaseInfo(f"id{pid}", pid, frozenset(cpus), f"job {pid}", 0.0, "", frozenset(), owner)


DEFAULTS = RunnerConfig()


def view(config=DEFAULTS, leases=()):
    return host_view(MACHINE, config, leases=tuple(leases), me=1)


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


def test_my_own_workers_leases_are_stray_not_strangers():
    mine = lease({0, 8}, pid=50, owner=1)
    cores = view(leases=[mine])
    assert cores.stray == {0, 8} and cores.strangers == frozenset()
