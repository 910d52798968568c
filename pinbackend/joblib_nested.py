"""Keep loky pools that a slot's own process starts inside the slot's thread budget.

A pool worker of pinbackend passes its thread caps (``OMP_NUM_THREADS`` and the like, equal
to its slot size) to the processes it starts, so that plain child processes stay capped.
joblib's ``loky`` backend, though, hands an inherited value down *unchanged* to each of its
workers (``LokyBackend._prepare_worker_env``): K sub-workers on a K-core slot would each run
K BLAS threads. Inside a slot, those sub-workers get the slot's share instead.

The joblib adapter registers :func:`share_caps_with_nested_loky` among the slot's
own-process hooks (:data:`pinbackend.host.slot.OWN_PROCESS_HOOKS`): applying a slot in a
process of its own installs it, undoing the slot undoes it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from joblib._parallel_backends import LokyBackend

from .host.patches import Patch

__all__ = ["share_caps_with_nested_loky"]


def share_caps_with_nested_loky(threads: int) -> Callable[[], None]:
    """Make ``Parallel(backend="loky", n_jobs=n)`` in this process give each worker
    ``threads // n`` threads (at least 1), where the caps in force are this slot's own.

    A cap the user set explicitly (``inner_max_num_threads``) or a thread variable that is
    not the slot's value is left as loky decides. Returns what puts loky's own method back
    (the applied slot's undo calls it; a slot applied over another undoes that one first).
    """
    patch = Patch(LokyBackend, "_prepare_worker_env", lambda original: _sharing(original, threads))
    return patch.install().undo


def _sharing(original: Callable, threads: int) -> Callable:
    ours = str(threads)

    @functools.wraps(original)
    def _prepare_worker_env(self, n_jobs):
        env = original(self, n_jobs)
        if self.inner_max_num_threads is None:
            share = str(max(threads // max(n_jobs, 1), 1))
            for var, value in env.items():
                if value == ours and os.environ.get(var) == ours:
                    env[var] = share
        return env

    return _prepare_worker_env
