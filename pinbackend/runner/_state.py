"""The runner's settings in this process (kept in :mod:`pinbackend.host.state`), and the base
class of every patch.

Kept free of imports from the rest of the runner so that every patch module can use it.
"""

from __future__ import annotations

import operator
from typing import ClassVar

from ..host.state import STATE
from ._config import RunnerConfig

__all__ = ["InitPatch", "Patch", "active_config", "pool_arguments_valid", "set_active_config"]


def active_config() -> RunnerConfig | None:
    """The settings of the runner job this process belongs to, or None outside the runner."""
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


class Patch:
    """One kind of pool or process start the runner changes.

    ``install`` and ``uninstall`` are idempotent; a patch reads :func:`active_config` when
    a pool is created, never at install time, so re-installing with new settings is cheap.
    """

    name: ClassVar[str]

    def install(self) -> None:
        """Replace the host's functions with the runner's (keeping the originals)."""
        raise NotImplementedError

    def uninstall(self) -> None:
        """Put the originals back."""
        raise NotImplementedError


class InitPatch(Patch):
    """Wrap one class's ``__init__`` in place, keeping the original to restore.

    Wrapping in place (instead of replacing the class) covers every way of making the
    object, subclasses included, and keeps ``isinstance`` checks and pickled class
    references unchanged. Subclasses set ``target`` and ``wrapper(original) -> __init__``.
    """

    target: ClassVar[type]

    def __init__(self) -> None:
        self._original = None

    @staticmethod
    def wrapper(original):
        """Return the replacement ``__init__`` calling ``original``."""
        raise NotImplementedError

    def install(self) -> None:
        """Wrap ``__init__`` (idempotent)."""
        if self._original is None:
            self._original = self.target.__init__
            self.target.__init__ = self.wrapper(self._original)

    def uninstall(self) -> None:
        """Restore the original ``__init__``."""
        if self._original is not None:
            self.target.__init__ = self._original
            self._original = None
