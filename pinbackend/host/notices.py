"""Warnings pinbackend gives in the user's program, each linked to its troubleshooting entry.

They go through :mod:`warnings` (so the program's own filters apply) and point at the
user's line that started the pool, not at pinbackend's, joblib's or the standard library's
frames. Every entry point (joblib backend, runner) uses these categories.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import warnings
from types import ModuleType

from .._docs import troubleshooting

__all__ = [
    "PinbackendWarning",
    "PoolResizedWarning",
    "SharedCoresWarning",
    "WaitingForCoresWarning",
    "skip_frames_of",
    "warn",
]


class PinbackendWarning(UserWarning):
    """Base class of the warnings pinbackend gives about a pool."""

    anchor = ""


class PoolResizedWarning(PinbackendWarning):
    """A pool got fewer workers than asked, because fewer cores are free (policy clamp)."""

    anchor = "pool-resized"


class SharedCoresWarning(PinbackendWarning):
    """No core was free, and ``oversubscribe="share"`` let the pool share other jobs' cores."""

    anchor = "pool-shares-cores-with-other-jobs"


class WaitingForCoresWarning(PinbackendWarning):
    """A pool waits for other jobs to free cores (said once, naming who holds them)."""

    anchor = "pool-waits-for-free-cores"


def _folder(package: ModuleType) -> str:
    return os.path.dirname(package.__file__) + os.sep


#: Directories whose frames are the machinery between the user's call and our warning:
#: pinbackend's, the standard pools', and those the adapters add (:func:`skip_frames_of`).
_MACHINERY = tuple(
    _folder(package)
    for package in (multiprocessing, concurrent.futures, sys.modules[__name__.split(".")[0]])
)


def skip_frames_of(package: ModuleType) -> None:
    """Point warnings past the frames of ``package`` (a framework an adapter wires into,
    such as joblib), at the user's line that called it."""
    global _MACHINERY
    if _folder(package) not in _MACHINERY:
        _MACHINERY = (*_MACHINERY, _folder(package))


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside pinbackend, the standard pools and the
    frameworks the adapters added (joblib)."""
    frame = sys._getframe(2)  # the caller of warn()
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_MACHINERY):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def warn(category: type[Warning], message: str, anchor: str | None = None) -> None:
    """Emit ``message`` at the user's line, naming the command that prints its entry.

    ``anchor`` defaults to the category's own.
    """
    anchor = anchor or getattr(category, "anchor", "")
    warnings.warn(
        f"{message}. See {troubleshooting(anchor)}", category, stacklevel=_user_stacklevel()
    )
