"""This process's pinbackend state, in one place, with one reset.

A process holds at most one slot (a pool worker, a Dask worker, a command under ``run``),
may run a runner job, may be a Dask worker, and gives some warnings only once. Every module
reads and writes these fields here instead of keeping globals of its own, so that tests and
a process that leaves its slot can forget all of it with :func:`reset_process_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import _platform

__all__ = ["STATE", "ProcessState", "reset_process_state"]


@dataclass
class ProcessState:
    """What pinbackend set up in this process.

    ``slot``: the applied slot (:class:`~pinbackend.host.slot.AppliedSlot`) or None.
    ``pool``: the pool plan this worker joined (to claim again after a failed claim).
    ``claim_error``: why this pool worker could not claim its slot; its tasks raise it.
    ``runner_config``: the settings of the runner job this process belongs to.
    ``worker_pin``: a Dask worker's pinning record. ``watched_owner``: the pool owner whose
    death ends this worker. ``keeper``: what gives an idle joblib worker's lease back and takes
    it again for its next task. ``main_cap``: the thread cap of the process itself (the runner's
    ``--threads``), None when its libraries keep their own defaults. ``warned``: one-time
    warnings given.
    """

    slot: Any = None
    pool: Any = None
    claim_error: BaseException | None = None
    runner_config: Any = None
    worker_pin: Any = None
    watched_owner: int | None = None
    keeper: Any = None
    main_cap: int | None = None
    warned: set[str] = field(default_factory=set)

    def warn_once(self, key: str) -> bool:
        """Return True the first time ``key`` is asked for in this process, False after."""
        if key in self.warned:
            return False
        self.warned.add(key)
        return True


STATE = ProcessState()


def reset_process_state() -> None:
    """Forget everything pinbackend set up in this process (tests; a process leaving its
    slot). Leases are not released here: their owners release them."""
    from .machine import clear_topology_cache

    STATE.__init__()
    clear_topology_cache()


def _forget_in_forked_child() -> None:
    # A forked child is a new process: its parent's claim failure and lease keeper (whose
    # thread did not survive the fork) are not its own.
    STATE.claim_error = None
    STATE.keeper = None


_platform.forget_in_forked_child(_forget_in_forked_child)
