"""Warnings the runner emits in the user's program, each linked to its troubleshooting entry.

The pool warnings are the package's own (:mod:`pinbackend.host.notices`, shared with the
joblib backend); only the start-method warning is the runner's.
"""

from __future__ import annotations

from ..host.notices import (
    PinbackendWarning,
    PoolResizedWarning,
    SharedCoresWarning,
    WaitingForCoresWarning,
    warn,
)

__all__ = [
    "ForkAfterOpenMPWarning",
    "PoolResizedWarning",
    "SharedCoresWarning",
    "WaitingForCoresWarning",
    "warn",
]


class ForkAfterOpenMPWarning(PinbackendWarning):
    """A fork pool was started with forkserver because GNU OpenMP threads run in the parent."""

    anchor = "fork-after-openmp"
