"""Processes started with ``spawn`` or ``forkserver`` re-install the runner's patches.

A forked child inherits the patched functions with the rest of the parent's memory. A
spawned or forkserver child is a fresh interpreter: it receives its ``Process`` object
pickled through a pipe. While the parent pickles it, the object carries one extra attribute
(a :class:`~pinbackend.host.patches.Patch` set around the pickling) whose unpickling calls
:func:`reinstall` with the job's settings, so the child is patched
before its ``run()`` starts (the user's ``Process`` subclasses and targets are untouched).
Pool workers also re-install from their initializer; this covers plain ``Process`` children
whose code starts pools of its own.
"""

from __future__ import annotations

import multiprocessing.context as mp_context

from ..host.patches import Patch, Patches
from ._config import RunnerConfig
from ._install import install
from ._state import active_config

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
        with Patch.setting(process_obj, _ATTRIBUTE, _Reinstall(config)):
            return original(process_obj)

    return _Popen


class ChildProcessPatch(Patches):
    """Wrap the ``_Popen`` of the spawn and forkserver ``Process`` classes (a staticmethod
    each, which stays one)."""

    def __init__(self) -> None:
        # forkserver does not exist everywhere (Windows); a missing class is skipped.
        names = ("SpawnProcess", "ForkServerProcess")
        classes = [cls for cls in (getattr(mp_context, n, None) for n in names) if cls]
        super().__init__(
            "multiprocessing spawn/forkserver children",
            [Patch(cls, "_Popen", _wrap) for cls in classes],
        )
