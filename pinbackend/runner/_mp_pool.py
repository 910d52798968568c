"""``multiprocessing.Pool`` and ``multiprocessing.pool.ThreadPool`` under the runner.

``Pool.__init__`` is wrapped in place (a :class:`~pinbackend.host.patches.Patch`), instead of
replacing the class: every way of making a pool (``multiprocessing.Pool()``,
``get_context(...).Pool()``, ``pool.Pool(...)``, subclasses such as joblib's ``MemmappingPool``,
and ``ThreadPool``, whose ``__init__`` calls ``Pool.__init__``) goes through it, and
``isinstance`` checks and pickled references to the class stay as they were. A process pool
also gets its own ``Process`` factory (patched on the pool object), which stops it when a
worker cannot claim its slot (:mod:`._claim_errors`).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.pool as mp_pool

from ..host.patches import Patch, Patches
from ..host.threads import enter_share
from ._claim_errors import ClaimErrors, guard_process_factory
from ._joblib import release_idle_workers
from ._openmp import safe_context
from ._plan import plan_process_pool, thread_pool_plan, track_pool
from ._state import active_config, pool_arguments_valid
from ._workers import hold_shares, start_process_worker

__all__ = ["MultiprocessingPoolPatch"]


def _pool_alive(pool) -> bool:
    """Whether a pool may still have running workers (not terminated, or not yet joined)."""
    if getattr(pool, "_state", mp_pool.RUN) == mp_pool.RUN:
        return True
    return any(worker.exitcode is None for worker in list(getattr(pool, "_pool", ())))


def _wrap(original):
    @functools.wraps(original)
    def __init__(
        self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None
    ):
        config = active_config()
        if config is None or not pool_arguments_valid(processes, initializer):
            return original(self, processes, initializer, initargs, maxtasksperchild, context)
        # Pool.__del__ reads _state; set it as the original does first, in case planning fails.
        self._state = mp_pool.INIT
        if isinstance(self, mp_pool.ThreadPool):
            what = f"{type(self).__name__}(processes={processes!r})"
            threads, pending, shares, cap = thread_pool_plan(config, processes, what)
            original(
                self,
                threads,
                enter_share,
                (pending, initializer, initargs),
                maxtasksperchild,
                context,
            )
            hold_shares(self, shares, cap, ("terminate", "join"))
            return None
        what = f"{type(self).__name__}(processes={processes!r})"
        plan = plan_process_pool(config, processes, what, release_stray=release_idle_workers)
        context = safe_context(context or multiprocessing.get_context(), plan.slots, what)
        # A worker that cannot claim its slot must stop the pool, not be replaced forever.
        claim_errors = ClaimErrors(context)
        guard = Patch(self, "Process", lambda factory: guard_process_factory(factory, claim_errors))
        guard.install()  # for the pool's life
        original(
            self,
            plan.n_workers,
            start_process_worker,
            (plan, config, initializer, initargs, claim_errors),
            maxtasksperchild,
            context,
        )
        track_pool(self, plan, _pool_alive)

    return __init__


class MultiprocessingPoolPatch(Patches):
    """Process pools: planned slots, claimed by each worker; thread pools: sized to the CPUs."""

    def __init__(self) -> None:
        super().__init__("multiprocessing.pool.Pool", [Patch(mp_pool.Pool, "__init__", _wrap)])
