"""Initializers that the patched pools chain in front of the user's own ``initializer``.

They are module-level functions (pickled by reference into spawned and forkserver workers)
and take only small picklable arguments.
"""

from __future__ import annotations

from collections.abc import Callable

from ..host.pool import PoolPlan
from ..host.threads import ThreadShares, hold_process_wide_cap
from ..host.worker import join_pool
from ._claim_errors import ClaimErrors
from ._config import RunnerConfig
from ._install import install

__all__ = ["hold_shares", "start_process_worker"]


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
    try:
        install(config)
        join_pool(pool)
    except Exception as error:
        if claim_errors is not None:
            claim_errors.report(error)
        raise
    if initializer is not None:
        initializer(*initargs)


def hold_shares(pool: object, shares: ThreadShares, cap: int, ends: tuple[str, ...]) -> None:
    """Keep a thread pool's leased cores, and the process-wide BLAS cap (``cap``) its
    threads need, until one of its ``ends`` methods returns or it is collected (whichever
    comes first: programs do not always say when they are done with a pool)."""
    hold_process_wide_cap(pool, cap, shares.release, ends)
