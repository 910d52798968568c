"""The distributed plugins: one registration, two halves.

:class:`PinPlugin` is what a user registers (``client.register_plugin(PinPlugin())``). It is
a scheduler plugin that, as distributed's own ``InstallPlugin`` does, registers its two
halves on the scheduler when it starts there:

- :class:`PinNannyPlugin`, the nanny half: the thread caps in the environment each worker
  process is spawned with (restarting a running worker whose spawn environment lacks them);
- :class:`PinWorkerPlugin`, the worker half: claim, pin and cap in each worker process.

The scheduler sends both to every nanny and worker that joins or restarts later. The halves
keep their own names (``"pinbackend-nanny"``, ``"pinbackend"``), so that registering either
yourself (older code, or a scheduler that cannot import pinbackend) still works. They only
wire :mod:`pinbackend.dask._worker` and :mod:`pinbackend.dask._nanny` into distributed's
plugin contract.
"""

from __future__ import annotations

from distributed.diagnostics.plugin import NannyPlugin, SchedulerPlugin, WorkerPlugin

from ..host.options import check_restart, reject_unknown
from ._nanny import configure_nanny, running_worker, spawned_otherwise
from ._outcome import GONE, close_worker, report_outcome
from ._worker import PinRefused, pin_worker, unpin_worker
from .options import PinOptions

__all__ = ["PinNannyPlugin", "PinPlugin", "PinWorkerPlugin"]


class _Options:
    """The options both :class:`PinPlugin` and its worker half take (those
    :class:`~pinbackend.host.options.PinOptions` declares for Dask), and the halves."""

    def __init__(self, cores_per_worker: int | str | None = None, **options):
        # The joblib backend's check: an unknown keyword names the closest valid one.
        reject_unknown(options, PinOptions.names("dask"), type(self).__name__)
        self.options = PinOptions(cores_per_worker, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.describe()})"

    def nanny_plugin(self, *, restart: bool | str = "auto") -> PinNannyPlugin:
        """The nanny half (:class:`PinNannyPlugin`) with the same slot options."""
        return PinNannyPlugin(self.options.cores_per_worker, restart=restart)

    def worker_plugin(self) -> PinWorkerPlugin:
        """The worker half (:class:`PinWorkerPlugin`) with the same options."""
        return PinWorkerPlugin(**self.options.keywords("dask"))


class PinWorkerPlugin(_Options, WorkerPlugin):
    """The worker half: pin each worker process to a slot of its host's cores, cap its pools.

    In ``setup`` the worker claims a slot of its size (``nthreads`` CPUs, or
    ``cores_per_worker`` physical cores), pins every thread of its process to it and caps
    BLAS/OpenMP so that ``nthreads x threads per task == slot size``; the cap is applied in
    each task thread, where OpenMP reads it. A worker the policy closes (``clamp``), or that
    cannot be pinned with ``fail="closed"``, closes with its nanny instead of running tasks;
    ``setup`` returns normally, so that registration reports no error for a cluster that
    runs as the policy says. Only ``oversubscribe="error"`` raises :class:`PinRefused`.
    Takes the parameters of :class:`PinPlugin`.
    """

    name = "pinbackend"
    idempotent = True
    #: Raise :class:`PinRefused` from ``setup`` under ``oversubscribe="error"`` (so that
    #: ``register_plugin`` raises); the preload's half closes the worker without it.
    raise_refusals = True

    async def setup(self, worker) -> None:
        """Claim, pin and cap before the worker runs any task (see the class docstring)."""
        state = await pin_worker(worker, self.options, source=self.name)
        if state.outcome not in GONE:
            if state.outcome != "pinned":
                await report_outcome(worker, state)
            return
        await close_worker(worker, state)
        if self.raise_refusals and self.options.policy("clamp") == "error":
            raise PinRefused(f"Dask worker {worker.address} refuses to start: {state.note}")

    def teardown(self, worker) -> None:
        """Release the slot and restore the worker's threads when the plugin goes away."""
        unpin_worker(worker, source=self.name)


class PinPlugin(_Options, SchedulerPlugin):
    """Pin each worker to a disjoint slot of its host's cores: register once, from a client.

    ``client.register_plugin(PinPlugin(...))`` runs on the scheduler, which then registers
    the nanny half (:class:`PinNannyPlugin`: caps in each worker's spawn environment,
    restarting workers spawned without them) and the worker half
    (:class:`PinWorkerPlugin`: claim, pin, cap), and returns once every current worker has
    been pinned, closed or set to share. pinbackend must be importable on the scheduler.

    Parameters are those of :class:`~pinbackend.host.options.PinOptions`:
    ``cores_per_worker`` (default ``"auto"``: ``nthreads`` CPUs), ``reserve``, ``oversubscribe``
    (``"clamp"``, the default, closes the workers a host has no slot for, with one warning
    per host; ``"share"`` runs them on shared slots; ``"error"`` refuses them and raises
    :class:`PinRefused` here; ``"wait"`` waits without bound for cores other jobs hold),
    ``fail`` (a worker that cannot be pinned at all: ``"closed"`` closes it, ``"open"``
    runs it unpinned) and ``claim_timeout`` (seconds a worker waits for cores other jobs
    hold). Registration is idempotent: registering again (even with other options) keeps
    what is there.
    """

    name = "pinbackend"
    idempotent = True

    async def start(self, scheduler) -> None:
        """Register the nanny half, then the worker half; raise a worker's refusal."""
        from distributed.core import clean_exception
        from distributed.protocol.pickle import dumps
        from distributed.protocol.serialize import Serialized, deserialize

        nanny = self.nanny_plugin()
        await scheduler.register_nanny_plugin(
            comm=None, plugin=dumps(nanny), name=nanny.name, idempotent=True
        )
        worker = self.worker_plugin()
        responses = await scheduler.register_worker_plugin(
            comm=None, plugin=dumps(worker), name=worker.name, idempotent=True
        )
        for response in (responses or {}).values():
            if response.get("status") == "error":
                response = {
                    key: deserialize(value.header, value.frames)
                    if isinstance(value, Serialized)
                    else value
                    for key, value in response.items()
                }
                _, error, traceback = clean_exception(**response)
                raise error.with_traceback(traceback)


class _PreloadPinPlugin(PinWorkerPlugin):
    """The worker half ``--preload pinbackend`` installs: its own name, so that a PinPlugin
    registered from a client later finds the worker pinned instead of replacing it."""

    name = "pinbackend-preload"
    raise_refusals = False


class PinNannyPlugin(NannyPlugin):
    """The nanny half: the thread caps in the environment each worker process starts with.

    distributed imports numpy while the worker process starts, before any worker plugin
    runs, so BLAS pools size themselves from the environment the nanny spawns with, and so
    does OpenMP's default for threads a task starts itself. This plugin sets that
    environment to the per-task-thread cap the worker will apply
    (:func:`~pinbackend.dask._nanny.spawn_env`). ``restart``: ``"auto"`` (what
    :class:`PinPlugin` registers) restarts a running worker only where it was spawned
    without these caps; ``True`` restarts every running worker; ``False`` none (the caps
    apply from the next worker start).
    """

    name = "pinbackend-nanny"
    idempotent = True
    restart: bool = False

    def __init__(
        self, cores_per_worker: int | str | None = None, *, restart: bool | str = False, **unknown
    ):
        reject_unknown(unknown, ("cores_per_worker", "restart"), type(self).__name__)
        check_restart("restart", restart)
        self.options = PinOptions(cores_per_worker)
        self.mode = restart
        self.restart = restart is True

    def __repr__(self) -> str:
        cores = self.options.cores_per_worker
        return f"{type(self).__name__}(cores_per_worker={cores}, restart={self.mode!r})"

    def setup(self, nanny) -> None:
        """Put the thread caps into the environment the nanny spawns workers with; under
        ``restart="auto"``, restart a running worker that was spawned without them."""
        spawned = dict(nanny.env)
        running = running_worker(nanny)
        env = configure_nanny(nanny, self.options)
        if self.mode == "auto":
            # distributed reads this attribute after setup; each nanny has its own copy.
            self.restart = running and spawned_otherwise(spawned, env)
