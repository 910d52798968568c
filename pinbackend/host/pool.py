"""The plan of one pool, as it travels to the pool's workers.

Pool workers (loky, ``multiprocessing``, Dask) have no stable index and come and go
(crashes, idle timeouts, restarts), so a worker cannot be *told* its slot: each new worker
claims the first planned slot that no live worker holds
(:func:`pinbackend.host.worker.join_pool`).
A :class:`PoolPlan` is small, picklable and equal across calls with the same settings, so
executors that compare their initializer arguments (loky) keep reusing their workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .caps import thread_env
from .options import DEFAULT_CLAIM_TIMEOUT
from .slot import SCOPE_ENV

__all__ = ["DEFAULT_CLAIM_TIMEOUT", "PoolPlan"]


@dataclass(frozen=True)
class PoolPlan:
    """The slots of one pool, the lease scope they live in and who planned them.

    ``threads`` caps each worker's pools below its slot size; ``requested`` is how many
    workers were asked for (None: as many as fit); ``user_limits`` are the thread-count
    variables the planner's user set (honoured up to the slot size, never above);
    ``avoid_pins``: workers look for other jobs' pinned processes on their slot right after
    pinning (``other_pins="avoid"``). ``grow``: slots the pool may add while it runs, once
    no other job holds their cores (a pool clamped by other jobs' cores grows back); a new
    worker claims one of them when every slot of ``slots`` is taken. ``job_cpus``: the CPUs
    the planner's job may use (what a pinned process must be narrower than to count).
    ``lend``: a running task borrows the idle workers' slots (:mod:`.lending`).
    """

    slots: tuple[frozenset[int], ...]
    scope: str
    owner: int
    shared: bool = False
    threads: int | None = None
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT
    requested: int | None = None
    user_limits: tuple[tuple[str, int], ...] = ()
    avoid_pins: bool = True
    grow: tuple[frozenset[int], ...] = ()
    job_cpus: frozenset[int] = frozenset()
    lend: bool = False

    @property
    def cpus(self) -> frozenset[int]:
        """The job's CPUs (where not recorded: the slots' and grow slots' CPUs)."""
        return self.job_cpus or frozenset().union(*self.slots, *self.grow)

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
        env = thread_env(self.thread_cap, dict(self.user_limits))
        if self.scope:
            env[SCOPE_ENV] = self.scope
        return env
