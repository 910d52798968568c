"""Pools of pinned workers: plan the slots once in the parent, claim one in each worker.

Pool workers (loky, ``multiprocessing``, Dask) have no stable index and come and go
(crashes, idle timeouts, restarts), so a worker cannot be *told* its slot: each new worker
claims the first planned slot that no live worker holds. The :class:`PoolPlan` travelling to
workers is small, picklable and equal across calls with the same settings, so executors that
compare their initializer arguments (loky) keep reusing their workers.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .. import _platform
from .._docs import troubleshooting
from ..core.cpuset import format_cpu_list
from ..core.planner import OversubscriptionWarning, plan_slots
from ..core.sysfs import read_topology
from ..core.topology import Topology
from .caps import thread_env
from .leases import Lease, LeaseConflict, busy_cpus, claim, claim_first_free, list_leases
from .slot import SCOPE_ENV, AppliedSlot, apply_slot, current_scope

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "PoolPlan",
    "free_cpus",
    "join_pool",
    "plan_pool",
]

#: Seconds a new worker waits for a slot: a crashed pool's old workers may still be exiting.
DEFAULT_CLAIM_TIMEOUT = 60.0


@dataclass(frozen=True)
class PoolPlan:
    """The slots of one pool, the lease scope they live in and who planned them."""

    slots: tuple[frozenset[int], ...]
    scope: str
    owner: int
    shared: bool = False
    threads: int | None = None
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT

    @property
    def n_workers(self) -> int:
        """How many workers the pool runs."""
        return len(self.slots)

    @property
    def thread_cap(self) -> int:
        """Threads per worker before it knows its slot: the smallest slot (or ``threads``)."""
        smallest = min(len(slot) for slot in self.slots)
        return smallest if self.threads is None else min(self.threads, smallest)

    def worker_env(self) -> dict[str, str]:
        """Environment for workers about to start: thread caps and the lease scope."""
        env = thread_env(self.thread_cap)
        if self.scope:
            env[SCOPE_ENV] = self.scope
        return env


def _free_view() -> tuple[Topology, frozenset[int], str, int]:
    """This host's topology, the CPUs held by strangers' leases, the scope and the owner."""
    topology = read_topology()
    scope = current_scope()
    owner = os.getpid()
    return topology, busy_cpus(scope, ignore_owner=owner), scope, owner


def free_cpus(reserve: Iterable[int] = ()) -> tuple[Topology, frozenset[int]]:
    """This host's topology and the CPUs a new pool of this process could use now.

    Allowed CPUs, minus ``reserve``, minus those held by other jobs' leases.
    """
    topology, busy, _, _ = _free_view()
    return topology, topology.allowed - frozenset(reserve) - busy


def plan_pool(
    n_workers: int | None = None,
    *,
    cores_per_worker: int | None = None,
    reserve: Iterable[int] = (),
    oversubscribe: str = "error",
    threads: int | None = None,
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
) -> PoolPlan:
    """Plan a pool on this host's free cores (inside the current slot when nested).

    Cores held by other leases in the same scope are left out, except those of this
    process's own pools, whose workers will be reused or replaced.
    """
    topology, busy, scope, owner = _free_view()
    plan = plan_slots(
        topology,
        n_workers,
        cores_per_worker=cores_per_worker,
        reserve=frozenset(reserve),
        busy=busy,
        oversubscribe=oversubscribe,
    )
    return PoolPlan(
        slots=plan.slots,
        scope=scope,
        owner=owner,
        shared=plan.shared,
        threads=threads,
        claim_timeout=claim_timeout,
    )


def join_pool(pool: PoolPlan) -> AppliedSlot:
    """In a new worker process: claim a free slot of ``pool`` and apply it.

    Runs before the worker takes any task. Raises :class:`pinbackend.host.leases.LeaseConflict`
    when no slot frees up within ``pool.claim_timeout`` (the worker then fails to start and
    the pool reports it), never running on a core another worker holds.
    """
    distinct = list(dict.fromkeys(pool.slots))
    if pool.shared:
        lease = _claim_shared(pool, distinct)
    else:
        lease = claim_first_free(
            distinct, scope=pool.scope, timeout=pool.claim_timeout, owner=pool.owner
        )
    threads = len(lease.cores) if pool.threads is None else min(pool.threads, len(lease.cores))
    applied = apply_slot(lease.cores, lease=lease, threads=threads, own_process=True)
    _exit_with_owner(pool.owner)
    return applied


def _exit_with_owner(owner: int) -> None:
    """End this worker when the process that planned its pool dies (SIGKILL included).

    Pool workers blocked on their task queue never notice a killed parent (loky's queue
    pipes stay open in every worker), and would keep their leases: watch the owner instead.
    """
    if owner == os.getpid():
        return

    def watch() -> None:
        _platform.wait_for_exit(owner)
        os._exit(70)  # EX_SOFTWARE: our pool's owner is gone

    threading.Thread(target=watch, name="pinbackend-owner-watch", daemon=True).start()


def _claim_shared(pool: PoolPlan, distinct: list[frozenset[int]]) -> Lease:
    """A free slot if there is one, else the slot the fewest live workers share."""
    try:
        return claim_first_free(distinct, scope=pool.scope, owner=pool.owner)
    except LeaseConflict:
        pass  # every slot is taken: share the least crowded one
    holders = Counter(info.cores for info in list_leases(pool.scope))
    # Shared leases hold no lock, so workers cannot see each other's choice: break ties by
    # pid so that workers started together spread over the slots instead of piling up.
    least = min(
        distinct,
        key=lambda cores: (holders[cores], (distinct.index(cores) - os.getpid()) % len(distinct)),
    )
    warnings.warn(
        f"worker {os.getpid()} shares CPUs {format_cpu_list(least)} with another worker "
        f"(oversubscribe='share'). See {troubleshooting('workers-share-core-sets')}",
        OversubscriptionWarning,
        stacklevel=2,
    )
    return claim(least, scope=pool.scope, share=True, owner=pool.owner)
