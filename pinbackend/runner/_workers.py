"""Initializers that the patched pools chain in front of the user's own ``initializer``.

They are module-level functions (pickled by reference into spawned and forkserver workers)
and take only small picklable arguments.
"""

from __future__ import annotations

from collections.abc import Callable

from ..host.caps import cap_openmp_in_this_thread
from ..host.lifecycle import join_pool
from ..host.pool import PoolPlan
from ._claim_errors import ClaimErrors
from ._config import RunnerConfig

__all__ = ["start_pool_thread", "start_process_worker"]


def start_process_worker(
    pool: PoolPlan,
    config: RunnerConfig,
    initializer: Callable | None,
    initargs: tuple,
    claim_errors: ClaimErrors | None = None,
) -> None:
    """Process-pool initializer: patch this worker, claim and apply a slot, run the user's.

    Runs in every new worker, replacements for ``maxtasksperchild`` included, before any
    task. Re-installing the patches makes pools nested in tasks plan inside this worker's
    slot; claiming before the user's initializer gives it a pinned, capped process. When
    the claim fails, the error goes to the pool's parent through ``claim_errors`` before it
    is raised here: a replacement would fail the same way, so the pool stops instead (see
    :mod:`._claim_errors`). The user's own initializer is not guarded: as without the runner.
    """
    # Imported here: _install imports the patch modules, which import this one.
    from ._install import install

    try:
        install(config)
        join_pool(pool)
    except Exception as error:
        if claim_errors is not None:
            claim_errors.report(error)
        raise
    if initializer is not None:
        initializer(*initargs)


def start_pool_thread(openmp_threads: int, initializer: Callable | None, initargs: tuple) -> None:
    """Thread-pool initializer: cap this thread's OpenMP teams, then run the user's.

    OpenMP's thread count is a per-thread setting (a new thread starts from the process
    default), so each pool thread caps its own.
    """
    cap_openmp_in_this_thread(openmp_threads)
    if initializer is not None:
        initializer(*initargs)
