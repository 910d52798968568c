"""``concurrent.futures.ProcessPoolExecutor`` and ``ThreadPoolExecutor`` under the runner.

Both ``__init__`` methods are wrapped in place (see :mod:`._mp_pool` for why), with
:class:`~pinbackend.host.patches.Patch`. Worker
processes of an executor start lazily and are replaced when ``max_tasks_per_child`` is
reached; each runs the chained initializer and claims a free slot of the executor's plan.
A worker that cannot claim one breaks the executor, and the pending futures raise its
error (:mod:`._claim_errors`).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import functools
import multiprocessing

from ..host.patches import Patch, Patches
from ..host.threads import enter_share
from ._claim_errors import ClaimErrors, watch_executor, wrap_terminate_broken
from ._joblib import release_idle_workers
from ._openmp import safe_context
from ._plan import plan_process_pool, thread_pool_plan, track_pool
from ._state import active_config, pool_arguments_valid
from ._workers import hold_shares, start_process_worker

__all__ = ["ProcessPoolExecutorPatch", "ThreadPoolExecutorPatch"]


def _executor_alive(executor) -> bool:
    """Whether an executor may still have running workers (not shut down, or not joined)."""
    if not getattr(executor, "_shutdown_thread", False):
        return True
    processes = getattr(executor, "_processes", None) or {}
    return any(process.exitcode is None for process in list(processes.values()))


def _wrap_process(original):
    @functools.wraps(original)
    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(), **kwargs):
        config = active_config()
        if config is None or not pool_arguments_valid(max_workers, initializer):
            return original(self, max_workers, mp_context, initializer, initargs, **kwargs)
        what = f"{type(self).__name__}(max_workers={max_workers!r})"
        plan = plan_process_pool(config, max_workers, what, release_stray=release_idle_workers)
        if mp_context is None:
            # The executor's own choice, made here: the claim-error queue needs the context.
            with_spawn = kwargs.get("max_tasks_per_child") is not None
            mp_context = multiprocessing.get_context("spawn" if with_spawn else None)
        mp_context = safe_context(mp_context, plan.slots, what)
        claim_errors = ClaimErrors(mp_context)
        original(
            self,
            plan.n_workers,
            mp_context,
            start_process_worker,
            (plan, config, initializer, initargs, claim_errors),
            **kwargs,
        )
        watch_executor(self, claim_errors)
        track_pool(self, plan, _executor_alive)

    return __init__


def _wrap_thread(original):
    @functools.wraps(original)
    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        config = active_config()
        if config is None or not pool_arguments_valid(max_workers, initializer):
            return original(self, max_workers, thread_name_prefix, initializer, initargs)
        what = f"{type(self).__name__}(max_workers={max_workers!r})"
        threads, pending, shares, cap = thread_pool_plan(config, max_workers, what)
        original(self, threads, thread_name_prefix, enter_share, (pending, initializer, initargs))
        hold_shares(self, shares, cap, ("shutdown",))

    return __init__


class ProcessPoolExecutorPatch(Patches):
    """Process executors: planned slots claimed by each (lazily started) worker.

    Also wraps the manager thread's ``terminate_broken``, so that a worker's claim error
    reaches the pending futures as itself (it acts on runner executors only).
    """

    def __init__(self) -> None:
        manager = concurrent.futures.process._ExecutorManagerThread
        super().__init__(
            "concurrent.futures.ProcessPoolExecutor",
            [
                Patch(manager, "terminate_broken", wrap_terminate_broken),
                Patch(concurrent.futures.ProcessPoolExecutor, "__init__", _wrap_process),
            ],
        )


class ThreadPoolExecutorPatch(Patches):
    """Thread executors: sized to the CPUs this process may use, OpenMP capped per thread."""

    def __init__(self) -> None:
        executor = concurrent.futures.ThreadPoolExecutor
        super().__init__(
            "concurrent.futures.ThreadPoolExecutor", [Patch(executor, "__init__", _wrap_thread)]
        )
