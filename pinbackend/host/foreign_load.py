"""How busy other programs keep some CPUs: the test before lending cores (:mod:`.lending`,
:mod:`.thread_lending`).

A loan widens a BLAS pool onto CPUs nobody leased; but a program that holds no lease and is
pinned nowhere (another user's unpinned job, a build) may keep them busy. OpenBLAS splits a
product evenly and waits for its slower half: widened onto a core another program kept
busy, each product took 45-57 ms against 35 ms capped (docs/how-it-works.md, "Lending idle
cores"). So a loan is made, and kept, only while other programs used less than
:data:`FOREIGN_BUSY_LIMIT` of the lent CPUs' time: the CPUs' busy time (``/proc/stat``) less
this process's own CPU time, between two looks.
"""

from __future__ import annotations

import time

from .. import _platform

__all__ = ["FOREIGN_BUSY_LIMIT", "ForeignLoad"]

#: The share of the lent CPUs' time other programs may use for a loan to be made or kept.
FOREIGN_BUSY_LIMIT = 0.5


class ForeignLoad:
    """Looks, one after the other, at how busy other programs kept a set of CPUs (the
    borrower's own plus those it would borrow) since the last look."""

    def __init__(self) -> None:
        self._cpus: frozenset[int] = frozenset()
        self._sample: tuple[float, float | None, float] | None = None

    def forget(self) -> None:
        """Start over: the next look has nothing to compare with."""
        self._sample = None

    def busy(self, cpus: frozenset[int], lent: frozenset[int]) -> bool | None:
        """Whether other programs used ``cpus`` for more than :data:`FOREIGN_BUSY_LIMIT` of
        ``lent``'s time since the last look at the same ``cpus``; None at a first look
        (nothing is known yet); False where ``/proc/stat`` cannot tell."""
        now = (time.monotonic(), _platform.cpu_busy_seconds(cpus), time.process_time())
        last, self._sample = self._sample, now
        if last is None or cpus != self._cpus:
            self._cpus = cpus
            return None
        if now[1] is None or last[1] is None:
            return False
        others = (now[1] - last[1]) - (now[2] - last[2])
        return others > FOREIGN_BUSY_LIMIT * len(lent) * (now[0] - last[0])
