"""joblib under the runner: the default backend becomes ``"pinned"``, bound to the job's cores.

As with joblib's default (loky), ``n_jobs=None`` runs inline, so scikit-learn code without
``n_jobs`` behaves as before; everything else is pinned. Explicit ``backend="pinned"`` gets
the same job settings.
"""

from __future__ import annotations

import joblib.parallel

from ..host.patches import ItemPatch, Patch, Patches
from ..host.slot import current_slot
from ..host.view import HostView
from ..joblib_backend import PinnedBackend, shutdown_workers
from ._plan import survey
from ._state import active_config

__all__ = ["DEFAULT_NAME", "JoblibPatch", "RunnerBackend", "release_idle_workers"]

#: Name under which the runner's default backend is registered (``"pinned"`` stays the
#: explicit one; both follow joblib's conventions, so they differ only in name).
DEFAULT_NAME = "pinned-default"


def _top_level_config():
    """The job's settings where they apply: in the runner, outside pinned workers."""
    config = active_config()
    return None if config is None or current_slot() is not None else config


class RunnerBackend(PinnedBackend):
    """``"pinned"`` inside a runner job: ``--cores``, ``--reserve``, ``-p``, the policy, the claim
    timeout and this program's live pools apply to every top-level ``Parallel`` call (nested
    calls subdivide their worker's slot, as with the plain backend)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = _top_level_config()
        if config is not None:
            self.options = self.options.within_job(config, given=kwargs)

    def _view(self) -> HostView:
        """The job's view: within ``--cores``, around this program's live runner pools."""
        config = _top_level_config()
        if config is None:
            return super()._view()
        return survey(config, self.options)

    def _sizing(self, n_jobs):
        """The plain sizing, with ``-p`` replacing any parallel ``n_jobs`` at the top level."""
        config = _top_level_config()
        if config is not None and config.processes is not None and n_jobs not in (None, 1):
            n_jobs = config.processes
        return super()._sizing(n_jobs)


class RunnerDefaultBackend(RunnerBackend):
    """The default backend in a runner job: pinned, but ``n_jobs=None`` runs inline."""

    default_n_jobs = 1


def release_idle_workers() -> bool:
    """Stop joblib's reusable workers if idle; return whether any were stopped.

    loky keeps idle workers (and their leases) for 300 s; a runner pool started meanwhile
    would wait for their slots. A worker busy with a task is never stopped.
    """
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is None or getattr(executor, "_pending_work_items", None):
        return False
    shutdown_workers()
    return True


class JoblibPatch(Patches):
    """Make ``"pinned"`` joblib's default backend (and bind both names to the job).

    What ``register_parallel_backend(..., make_default=True)`` does, undone exactly: the two
    names in joblib's registry of backends, and its default backend's name.
    """

    def __init__(self) -> None:
        backends = joblib.parallel.BACKENDS
        super().__init__(
            "joblib",
            [
                ItemPatch.setting(backends, "pinned", RunnerBackend),
                ItemPatch.setting(backends, DEFAULT_NAME, RunnerDefaultBackend),
                Patch.setting(joblib.parallel, "DEFAULT_BACKEND", DEFAULT_NAME),
            ],
        )
