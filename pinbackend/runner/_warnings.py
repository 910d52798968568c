"""Warnings the runner emits in the user's program, each linked to its troubleshooting entry.

They go through :mod:`warnings` (so the program's own filters apply) and point at the
user's line that created the pool, not at pinbackend's or the standard library's frames.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import warnings

import joblib

from .._docs import troubleshooting

__all__ = [
    "ForkAfterOpenMPWarning",
    "PoolResizedWarning",
    "RunnerWarning",
    "SharedCoresWarning",
    "WaitingForCoresWarning",
    "warn",
]


class RunnerWarning(UserWarning):
    """Base class of the runner's warnings."""

    anchor = ""


class PoolResizedWarning(RunnerWarning):
    """A pool got fewer workers than asked (``-p`` or its own size) because cores are busy."""

    anchor = "pool-resized-by-the-runner"


class SharedCoresWarning(RunnerWarning):
    """No core was free, and ``--oversubscribe share`` let the pool share other jobs' cores."""

    anchor = "pool-shares-cores-with-other-jobs"


class WaitingForCoresWarning(RunnerWarning):
    """``--oversubscribe wait``: a pool waits for other jobs to free cores."""

    anchor = "pool-waits-for-free-cores"


class ForkAfterOpenMPWarning(RunnerWarning):
    """A fork pool was started with forkserver because GNU OpenMP threads run in the parent."""

    anchor = "fork-after-openmp"


# Frames in these directories are the machinery between the user's call and our warning
# (pinbackend's own frames count: the runner package sits inside it).
_MACHINERY = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (multiprocessing, concurrent.futures, joblib, sys.modules[__name__.split(".")[0]])
)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside pinbackend, multiprocessing, futures."""
    frame = sys._getframe(2)  # the caller of warn()
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_MACHINERY):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def warn(category: type[Warning], message: str, anchor: str | None = None) -> None:
    """Emit ``message`` at the user's line, with a link to its troubleshooting entry.

    ``anchor`` defaults to the category's own (runner warnings carry one).
    """
    anchor = anchor or getattr(category, "anchor", "")
    warnings.warn(
        f"{message} (see {troubleshooting(anchor)})", category, stacklevel=_user_stacklevel()
    )
