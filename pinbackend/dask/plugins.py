"""The distributed plugins: :class:`PinPlugin` for workers, :class:`PinNannyPlugin` for nannies.

Register them from a client (``client.register_plugin(PinPlugin())``); the scheduler sends
them to every worker or nanny that joins or restarts later, so each new worker process
claims and pins its own slot. They only wire :mod:`pinbackend.dask._worker` and
:mod:`pinbackend.dask._nanny` into distributed's plugin contract.
"""

from __future__ import annotations

from collections.abc import Iterable

from distributed.core import Status
from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

from ._nanny import configure_nanny
from ._worker import PinRefused, pin_worker, unpin_worker
from .options import DEFAULT_CLAIM_TIMEOUT, PinOptions

__all__ = ["PinNannyPlugin", "PinPlugin"]


class PinPlugin(WorkerPlugin):
    """Pin each worker process to a disjoint slot of its host's cores and cap its pools.

    In ``setup`` the worker plans its host's free cores into slots of its size, leases the
    first free one, pins every thread of its process to it and caps BLAS/OpenMP so that
    ``nthreads x threads per task == slot size``; the cap is applied in each task thread,
    where OpenMP reads it. ``fail="closed"`` (the default) makes a worker that cannot be
    pinned close itself and its nanny instead of running tasks; ``fail="open"`` logs one
    warning and runs it unpinned (:func:`~pinbackend.dask.placement` shows it).

    Parameters are those of :class:`~pinbackend.dask.options.PinOptions`. Registration is
    idempotent: registering again (even with other options) keeps the plugin already there;
    unregister it first to change options.
    """

    name = "pinbackend"
    idempotent = True

    def __init__(
        self,
        cores_per_worker: int | None = None,
        *,
        reserve: Iterable[int] | str = (),
        fail: str = "closed",
        claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
    ):
        self.options = PinOptions(
            cores_per_worker, reserve=reserve, fail=fail, claim_timeout=claim_timeout
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.describe()})"

    async def setup(self, worker) -> None:
        """Claim, pin and cap before the worker runs any task (see the class docstring)."""
        try:
            await pin_worker(worker, self.options, source=self.name)
        except PinRefused:
            if worker.status != Status.init:
                # Already registered with the scheduler, so raising alone would only be
                # logged: close the worker, and its nanny so that it is not restarted.
                worker.loop.add_callback(
                    worker.close, nanny=True, reason="pinbackend-pinning-refused"
                )
            raise

    def teardown(self, worker) -> None:
        """Release the slot and restore the worker's threads when the plugin goes away."""
        unpin_worker(worker, source=self.name)

    def nanny_plugin(self, *, restart: bool = False) -> PinNannyPlugin:
        """The companion :class:`PinNannyPlugin` with the same slot options."""
        return PinNannyPlugin(self.options.cores_per_worker, restart=restart)


class _PreloadPinPlugin(PinPlugin):
    """The plugin ``--preload pinbackend`` installs: its own name, so that a PinPlugin
    registered from a client later finds the worker pinned instead of replacing it."""

    name = "pinbackend-preload"


class PinNannyPlugin(NannyPlugin):
    """Set the thread-count variables before each worker process starts.

    distributed imports numpy while the worker process starts, before any worker plugin
    runs, so BLAS pools size themselves from the environment the nanny spawns with. This
    plugin sets that environment to the per-task-thread cap the worker will apply
    (:func:`~pinbackend.dask._nanny.spawn_env`). It is optional: :class:`PinPlugin` caps at
    run time anyway; with it, pools start at the right size and threads a task starts
    itself inherit the right OpenMP default. It applies from the next worker start;
    ``restart=True`` restarts running workers when registered.
    """

    name = "pinbackend-nanny"
    idempotent = True
    restart = False

    def __init__(self, cores_per_worker: int | None = None, *, restart: bool = False):
        self.options = PinOptions(cores_per_worker)
        self.restart = bool(restart)

    def __repr__(self) -> str:
        cores = self.options.cores_per_worker
        return f"{type(self).__name__}(cores_per_worker={cores}, restart={self.restart})"

    def setup(self, nanny) -> None:
        """Put the thread caps into the environment the nanny spawns workers with."""
        configure_nanny(nanny, self.options)
