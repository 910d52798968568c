"""Initializers that the patched pools chain in front of the user's own ``initializer``.

They are module-level functions (pickled by reference into spawned and forkserver workers)
and take only small picklable arguments.
"""

from __future__ import annotations

from collections.abc import Callable

from ..host.pool import PoolPlan, join_pool
from ._config import RunnerConfig

__all__ = ["start_pool_thread", "start_process_worker"]


def start_process_worker(
    pool: PoolPlan,
    config: RunnerConfig,
    initializer: Callable | None,
    initargs: tuple,
) -> None:
    """Process-pool initializer: patch this worker, claim and apply a slot, run the user's.

    Runs in every new worker, replacements for ``maxtasksperchild`` included, before any
    task. Re-installing the patches makes pools nested in tasks plan inside this worker's
    slot; claiming before the user's initializer gives it a pinned, capped process.
    """
    # Imported here: _install imports the patch modules, which import this one.
    from ._install import install

    install(config)
    join_pool(pool)
    if initializer is not None:
        initializer(*initargs)


def start_pool_thread(openmp_threads: int, initializer: Callable | None, initargs: tuple) -> None:
    """Thread-pool initializer: cap this thread's OpenMP teams, then run the user's.

    OpenMP's thread count is a per-thread setting (a new thread starts from the process
    default), so each pool thread caps its own.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=openmp_threads, user_api="openmp")
    if initializer is not None:
        initializer(*initargs)
