"""Install and remove the runner's patches: one :class:`~pinbackend.host.patches.Patches` per
kind of pool.

The registry is a plain list, as threadpoolctl lists its controllers; the package fills it
when it is imported (:mod:`pinbackend.runner`), so it is full before any code of the runner
runs, in a spawned worker too. This module imports no patch: the patches' worker-start code
calls :func:`install`. Installing records the job's settings first, so that every patch
finds them when a pool is created.
"""

from __future__ import annotations

from ..host.patches import Patches
from ._config import RunnerConfig
from ._state import active_config, set_active_config

__all__ = ["PATCHES", "install", "installed", "register", "uninstall"]

#: The runner's patches, in install order (removed in reverse).
PATCHES: list[Patches] = []


def register(*patches: Patches) -> None:
    """Add patches to the registry (each once), in install order."""
    PATCHES.extend(patch for patch in patches if patch not in PATCHES)


def install(config: RunnerConfig) -> None:
    """Patch this process's pools for a runner job with ``config`` (idempotent).

    Never touches ``os.environ`` and never pins this process: only pools created from now
    on change (and processes they start, which re-install this in turn).
    """
    if not isinstance(config, RunnerConfig):
        raise TypeError(f"install() needs a RunnerConfig; got {type(config).__name__}")
    set_active_config(config)
    for patch in PATCHES:
        patch.install()


def uninstall() -> None:
    """Undo every patch; pools created afterwards behave as without the runner."""
    for patch in reversed(PATCHES):
        patch.undo()
    set_active_config(None)


def installed() -> bool:
    """Whether the runner's patches are active in this process."""
    return active_config() is not None
