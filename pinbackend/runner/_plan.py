"""Plan each pool the runner starts: the lifecycle's policy decision, on the job's free cores
and this process's live pools.

The decision itself (:func:`pinbackend.host.policy.decide`) and the waiting
(:func:`pinbackend.host.lifecycle.decide_waiting`) are shared with the joblib backend; this module
adds what only the runner knows: ``--cores``, ``-p``, and the pools this process started,
whose cores a second pool must not reuse while they live.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.topology import Topology
from ..host import lifecycle, policy, view
from ..host.options import PinOptions
from ..host.policy import COMMAND_LINE, Decision, Request
from ..host.pool import PoolPlan
from ..host.slot import current_slot
from ..host.state import STATE
from ..host.threads import assign_threads, assignments_queue, plan_thread_shares
from ..host.view import HostView
from ._config import RunnerConfig

__all__ = [
    "decide",
    "host_view",
    "live_pool_cpus",
    "plan_process_pool",
    "request",
    "survey",
    "thread_pool_plan",
    "track_pool",
]


def track_pool(pool: object, plan: PoolPlan, alive: Callable[[object], bool]) -> None:
    """Remember ``pool``'s slots until it is collected or ``alive(pool)`` turns false (in
    ``STATE.live_pools``, which a forked child forgets: its parent's pools are not its own)."""
    with STATE.lock:
        STATE.live_pools[pool] = (plan, alive)


def live_pool_cpus() -> frozenset[int]:
    """CPUs of this process's runner pools whose workers may still run."""
    with STATE.lock:
        entries = list(STATE.live_pools.items())
    cpus: set[int] = set()
    for pool, (plan, alive) in entries:
        try:
            running = alive(pool)
        except Exception:
            running = True  # cannot tell: keep its cores out of new plans
        if running:
            cpus.update(*plan.slots)
        else:
            with STATE.lock:
                STATE.live_pools.pop(pool, None)
    return frozenset(cpus)


def host_view(topology: Topology, config: RunnerConfig, **read) -> HostView:
    """The job's view (:func:`pinbackend.host.view.host_view`) within ``--cores`` (pure)."""
    return view.host_view(topology, config, cores=config.cores, **read)


def request(config: RunnerConfig, requested: int | None, what: str) -> Request:
    """A pool of the program asking for ``requested`` workers, with ``-p`` and the command
    line's spelling."""
    return Request(what, workers=requested, processes=config.processes, spelling=COMMAND_LINE)


def decide(job: HostView, config: RunnerConfig, requested: int | None, what: str) -> Decision:
    """The shared policy decision for a pool of the program."""
    return policy.decide(job, config, request(config, requested, what))


def survey(config: RunnerConfig, options: PinOptions | None = None) -> HostView:
    """Read this host now (the lifecycle's one survey), with this process's live pools.

    ``options`` are a joblib call's own (the job's settings merged in), else the job's.
    """
    return view.survey(
        options or config,
        cores=config.cores,
        nested=current_slot() is not None,
        own_pools=live_pool_cpus(),
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
    decision, job = lifecycle.decide_waiting(
        lambda: survey(config), config, request(config, requested, what)
    )
    lifecycle.report_decision(decision, what)
    return lifecycle.pool_from(decision, job, config)


def thread_pool_plan(config: RunnerConfig, requested: int | None, what: str):
    """A thread pool of the program: how many threads, and the queue of their assignments.

    Each thread runs on its own share of the cores this process may use (its slot in a
    pinned worker; the job's free cores, leased for the pool's life, or ``--threads`` of
    them, in the main process) with its caps set in the thread. A pool without a size gets
    one thread per share; an explicit size is kept (threads waiting on I/O are a fine reason
    for many): threads beyond the cores take turns on the shares and split their caps.
    Returns ``(threads, assignments, shares, smallest thread cap)``.
    """
    n_shares = requested
    if n_shares is None and current_slot() is None and config.threads is not None:
        n_shares = config.threads
    # The program's thread count is kept (extra threads take turns), so too many threads is
    # never an error; the rest of the job's policy holds (share, wait) when no core is free.
    policy = "clamp" if config.oversubscribe == "error" else config.oversubscribe
    shares = plan_thread_shares(
        n_shares,
        config.updated(oversubscribe=policy),
        what,
        report=False,
        view=lambda: survey(config),
        spelling=COMMAND_LINE,
    )
    assignments = assign_threads(shares, requested)
    cap = min(cap for _, cap in assignments)
    return len(assignments), assignments_queue(assignments), shares, cap
