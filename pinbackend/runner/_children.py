"""Processes started with ``spawn`` or ``forkserver`` re-install the runner's patches.

A forked child inherits the patched functions with the rest of the parent's memory. A
spawned or forkserver child is a fresh interpreter: it receives its ``Process`` object
pickled through a pipe. While the parent pickles it, the object carries one extra attribute
whose unpickling calls :func:`reinstall` with the job's settings, so the child is patched
before its ``run()`` starts (the user's ``Process`` subclasses and targets are untouched).
Pool workers also re-install from their initializer; this covers plain ``Process`` children
whose code starts pools of its own.
"""

from __future__ import annotations

import multiprocessing.context as mp_context

from ._config import RunnerConfig
from ._install import install
from ._state import Patch, active_config

__all__ = ["ChildProcessPatch", "reinstall"]

_ATTRIBUTE = "_pinbackend_runner"


def reinstall(config: RunnerConfig) -> None:
    """Install the runner's patches in this (child) process with ``config``."""
    install(config)


class _Reinstall:
    """Unpickles as a call to :func:`reinstall` (its value in the child is then None)."""

    __slots__ = ("config",)

    def __init__(self, config: RunnerConfig):
        self.config = config

    def __reduce__(self):
        return reinstall, (self.config,)


def _wrap(original):
    def _Popen(process_obj):
        config = active_config()
        if config is None:
            return original(process_obj)
        # Pickling happens inside original(), synchronously: the attribute can go after.
        setattr(process_obj, _ATTRIBUTE, _Reinstall(config))
        try:
            return original(process_obj)
        finally:
            process_obj.__dict__.pop(_ATTRIBUTE, None)

    return staticmethod(_Popen)


class ChildProcessPatch(Patch):
    """Wrap the ``_Popen`` of the spawn and forkserver ``Process`` classes."""

    name = "multiprocessing spawn/forkserver children"

    def __init__(self) -> None:
        self._originals: dict[type, staticmethod] = {}

    def _classes(self) -> list[type]:
        # forkserver does not exist everywhere (Windows); a missing class is skipped.
        names = ("SpawnProcess", "ForkServerProcess")
        return [cls for cls in (getattr(mp_context, n, None) for n in names) if cls is not None]

    def install(self) -> None:
        """Wrap each class's ``_Popen`` (idempotent)."""
        for cls in self._classes():
            if cls not in self._originals:
                original = cls.__dict__["_Popen"]
                self._originals[cls] = original
                cls._Popen = _wrap(original.__func__)

    def uninstall(self) -> None:
        """Restore the original ``_Popen`` functions."""
        for cls, original in self._originals.items():
            cls._Popen = original
        self._originals.clear()
