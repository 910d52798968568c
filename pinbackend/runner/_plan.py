"""Plan each pool the runner starts: the lifecycle's policy decision, on the job's free cores
and this process's live pools.

The decision itself (:func:`pinbackend.host.policy.decide`) and the waiting
(:func:`pinbackend.host.lifecycle.size_pool`) are shared with the joblib backend; this module
adds what only the runner knows: ``--cores``, ``-p``, and the pools this process started,
whose cores a second pool must not reuse while they live.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from .. import _platform
from ..core.topology import Topology
from ..host import lifecycle, policy
from ..host.policy import COMMAND_LINE, JobCores, PoolDecision
from ..host.pool import PoolPlan
from ..host.slot import current_slot
from ._config import RunnerConfig

__all__ = [
    "JobCores",
    "PoolDecision",
    "decide",
    "job_cores",
    "live_pool_cpus",
    "plan_process_pool",
    "survey",
    "thread_pool_size",
    "track_pool",
]


# Pools this process started, with a function telling whether their workers still run.
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LIVE_LOCK = threading.Lock()


def _forget_pools_in_child() -> None:
    # A forked worker inherits the table, but its parent's pools are not its own: keeping
    # them would hide every core of its slot from the pools it starts.
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    _LIVE.clear()


_platform.forget_in_forked_child(_forget_pools_in_child)


def track_pool(pool: object, plan: PoolPlan, alive: Callable[[object], bool]) -> None:
    """Remember ``pool``'s slots until it is collected or ``alive(pool)`` turns false."""
    with _LIVE_LOCK:
        _LIVE[pool] = (plan, alive)


def live_pool_cpus() -> frozenset[int]:
    """CPUs of this process's runner pools whose workers may still run."""
    with _LIVE_LOCK:
        entries = list(_LIVE.items())
    cpus: set[int] = set()
    for pool, (plan, alive) in entries:
        try:
            running = alive(pool)
        except Exception:
            running = True  # cannot tell: keep its cores out of new plans
        if running:
            cpus.update(*plan.slots)
        else:
            with _LIVE_LOCK:
                _LIVE.pop(pool, None)
    return frozenset(cpus)


def job_cores(topology: Topology, config: RunnerConfig, **view) -> JobCores:
    """The job's view (:func:`pinbackend.host.policy.job_cores`) within ``--cores``."""
    return policy.job_cores(topology, config, cores=config.cores, **view)


def decide(view: JobCores, config: RunnerConfig, requested: int | None, what: str) -> PoolDecision:
    """The shared policy decision, with ``-p`` and the command line's spelling."""
    return policy.decide(
        view, config, requested, what, processes=config.processes, spelling=COMMAND_LINE
    )


def survey(config: RunnerConfig) -> JobCores:
    """Read this host now (the lifecycle's one survey) and add this process's live pools."""
    view = lifecycle.survey()
    return job_cores(
        view.topology,
        config,
        nested=current_slot() is not None,
        scope=view.scope,
        leases=view.leases,
        own=live_pool_cpus(),
        me=view.owner,
    )


def plan_process_pool(
    config: RunnerConfig,
    requested: int | None,
    what: str,
    *,
    release_stray: Callable[[], bool] = lambda: False,
) -> PoolPlan:
    """Plan a process pool of this job (waiting if the policy says so) and say what changed.

    ``release_stray`` is called once when this process's own stray leases could be in the
    way (joblib's idle workers); it returns whether it released any.
    """
    if survey(config).stray:
        release_stray()
    decision, view = lifecycle.size_pool(
        lambda: survey(config),
        config,
        requested,
        what,
        processes=config.processes,
        spelling=COMMAND_LINE,
    )
    lifecycle.report_decision(decision, what)
    return lifecycle.pool_from(decision, view, config)


def thread_pool_size(config: RunnerConfig, requested: int | None) -> tuple[int, int]:
    """Threads for a thread pool, and the OpenMP threads each of them may start.

    A pool without a size gets one thread per CPU this process may use (its slot in a
    pinned worker; the job's free CPUs, or ``--threads``, in the main process). An explicit
    size is kept (threads waiting on I/O are a fine reason for many); each thread's OpenMP
    team is capped so that all of them together fit those CPUs.
    """
    slot = current_slot()
    if slot is not None:
        cpus = len(slot.cores)
    else:
        view = survey(config)
        cpus = max(len(view.usable - view.strangers), 1)
        if config.threads is not None:
            cpus = min(cpus, config.threads)
    threads = cpus if requested is None else requested
    return threads, max(cpus // threads, 1)
