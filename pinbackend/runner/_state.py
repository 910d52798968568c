"""The runner's settings in this process (kept in :mod:`pinbackend.host.state`), and the check
every pool patch makes before it changes a pool.

Kept free of imports from the rest of the runner so that every patch module can use it. The
patches themselves are :class:`~pinbackend.host.patches.Patches`, listed by
:mod:`._install`.
"""

from __future__ import annotations

import operator

from ..host.state import STATE
from ._config import RunnerConfig

__all__ = ["active_config", "pool_arguments_valid", "set_active_config"]


def active_config() -> RunnerConfig | None:
    """The settings of the runner job this process belongs to, or None outside the runner.

    Patches read it when a pool is created, never at install time, so re-installing with
    new settings is cheap.
    """
    return STATE.runner_config


def set_active_config(config: RunnerConfig | None) -> None:
    """Record (or clear) the runner settings; only :mod:`pinbackend.runner._install` calls it."""
    STATE.runner_config = config


def pool_arguments_valid(size, initializer) -> bool:
    """Whether a pool's size and initializer are ones the original accepts.

    When they are not, the patches step aside so that the original raises its own error.
    """
    if initializer is not None and not callable(initializer):
        return False
    if size is None:
        return True
    try:
        return operator.index(size) >= 1
    except TypeError:
        return False
