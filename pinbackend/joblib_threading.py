"""joblib's threads, pinned: what the ``"pinned"`` backend runs when a call asks for threads.

scikit-learn asks for shared memory (``require="sharedmem"``: forests' ``predict``, SGD) or
prefers threads (``prefer="threads"``) where its kernels release the GIL. joblib would run
those calls on plain threads in the caller, each floating over every core with a BLAS and an
OpenMP pool sized to the machine. Under ``"pinned"`` they run on a
:class:`~pinbackend.host.threads.PinnedThreadPool` instead: one disjoint, capped share of
the cores per thread, with the same ``n_jobs`` conventions and policies as process pools.
"""

from __future__ import annotations

import os

from joblib._parallel_backends import FallbackToBackend, SequentialBackend, ThreadingBackend

from .host.caps import user_thread_limits
from .host.options import PinOptions
from .host.slot import in_slot
from .host.threads import PinnedThreadPool, plan_thread_shares, run_capped

__all__ = ["PinnedThreadingBackend", "RunThrough"]


class RunThrough:
    """A joblib task run through one of the lifecycle's task runners (``run(func)``):
    :func:`~pinbackend.host.worker.task_in_slot` in pinned workers,
    :func:`~pinbackend.host.threads.run_capped` on pinned threads. Small and picklable."""

    __slots__ = ("func", "run")

    def __init__(self, run, func):
        self.run, self.func = run, func

    def __call__(self):
        return self.run(self.func)


class PinnedThreadingBackend(ThreadingBackend):
    """joblib's threading backend on pinned, capped threads (see the module docstring)."""

    def __init__(
        self,
        nesting_level=None,
        *,
        options: PinOptions,
        sizing,
        user_cap: int | None = None,
        **backend_kwargs,
    ):
        super().__init__(nesting_level=nesting_level, **backend_kwargs)
        self.options = options
        self._size = sizing  # the process backend's n_jobs rules, shared
        # Lending widens BLAS pools past a share: not where the user fixed slots or set a
        # thread cap (inner_max_num_threads, a thread variable), as for process pools.
        self._lend = not (
            options.fixed_slots or user_cap is not None or user_thread_limits(os.environ)
        )

    def effective_n_jobs(self, n_jobs):
        """Threads for ``n_jobs``, by the same rules as the pinned process pools."""
        return self._size(n_jobs)[1]

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        """Plan and lease one share per thread; start the pool lazily, as joblib does."""
        requested, reported = self._size(n_jobs)
        if reported == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        shares = plan_thread_shares(requested, self.options, f"Parallel(n_jobs={n_jobs})")
        if len(shares.shares) == 1 and in_slot():
            shares.release()
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._shares = shares
        self.parallel = parallel
        self._n_jobs = len(shares.shares)
        return self._n_jobs if self._n_jobs > 1 or in_slot() else 2

    def submit(self, func, callback=None):
        """Schedule ``func`` on a pinned thread (capped again if libraries loaded since)."""
        return super().submit(RunThrough(run_capped, func), callback=callback)

    def _get_pool(self):
        if self._pool is None:
            self._pool = PinnedThreadPool(self._shares, lend=self._lend)
        return self._pool

    def terminate(self):
        """Stop the threads and give their cores back (also when no task ever ran): a pool
        gives each back once its thread has ended (see ``PinnedThreadPool.terminate``)."""
        started = self._pool is not None
        super().terminate()
        shares, self._shares = getattr(self, "_shares", None), None
        if shares is not None and not started:
            shares.release()
