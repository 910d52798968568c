"""This process's pinbackend state, in one place, with one reset and one at-fork hook.

A process holds at most one slot (a pool worker, a Dask worker, a command under ``run``),
holds leases, may start runner pools and pinned thread pools, may run a runner job, may be
a Dask worker, may watch extension-module loads, and gives some warnings only once. Every
module keeps what the process *has* in :data:`STATE` (or in an object it owns), so that:

- a forked child forgets what is not its own in one hook (:func:`_forget_in_forked_child`):
  the locks other threads held, the parent's leases, pools, claim error and keeper;
- tests forget all of it with :func:`reset_process_state`.

What stays at module level elsewhere is not a process's state: constants, registries that
code fills on import (cap controllers, the runner's patches, slot hooks), lock objects
(remade in a forked child by the same hook) and per-thread data (``threading.local``).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from .. import _platform
from .locks import PinLock, remake_in_forked_child

__all__ = ["STATE", "ProcessState", "reset_process_state"]


def _state_lock() -> PinLock:
    return PinLock("process state")


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

    ``leases``: the leases this process holds, by id (:mod:`~pinbackend.host.leases`).
    ``live_pools``: the runner pools this process started, with their plan and a function
    telling whether their workers still run (:mod:`pinbackend.runner._plan`);
    ``claim_channels``: where the runner's executors find a worker's claim error.
    ``running_tasks``: pinned pool threads running a task now (thread idents), under
    ``running_lock``: a plain lock, taken twice per task (0.4 µs where a :class:`PinLock`
    takes 2.6), held for no call out, and made anew by the at-fork hook.
    ``blas_cap``: the cap on process-wide BLAS pools while pinned thread pools live
    (:mod:`~pinbackend.host.threads`). ``load_watch``: the extension-load watch
    (:mod:`~pinbackend.host.loads`). ``library_watch``: the runner's ``--threads`` watch.
    ``cpu_samples``: CPU time read from other processes' pinned threads, to tell busy from
    idle at the next survey (:mod:`~pinbackend.host.foreign`).
    ``lock`` guards the other tables and ``watched_owner``, and making the objects on first
    use; it is held for no call out.
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
    leases: dict[str, Any] = field(default_factory=dict)
    live_pools: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    claim_channels: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    running_tasks: set[int] = field(default_factory=set)
    running_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    blas_cap: Any = None
    load_watch: Any = None
    library_watch: Any = None
    cpu_samples: dict = field(default_factory=dict)
    lock: PinLock = field(default_factory=_state_lock, repr=False, compare=False)

    def warn_once(self, key: str) -> bool:
        """Return True the first time ``key`` is asked for in this process, False after."""
        # A check and an add: without the GIL, threads asking together each saw it missing.
        with self.lock:
            if key in self.warned:
                return False
            self.warned.add(key)
            return True


STATE = ProcessState()


def reset_process_state() -> None:
    """Undo and forget everything pinbackend set up in this process (tests use it).

    The applied slot is undone and the extension-load watch taken out. Leases are kept:
    their owners release them.
    """
    from .machine import clear_topology_cache

    slot, watch, leases = STATE.slot, STATE.load_watch, STATE.leases
    try:
        if slot is not None:
            slot.undo()
    finally:
        if watch is not None:
            watch.stop()
        STATE.__init__()
        STATE.leases = leases
        clear_topology_cache()


def _forget_in_forked_child() -> None:
    # A forked child is a new process with one thread. Locks first: another thread may have
    # held one at the fork, and what follows takes them.
    remake_in_forked_child()
    # The parent's leases: close our copies of their descriptors (the parent keeps its
    # locks), so that the child never holds them alone.
    for lease in STATE.leases.values():
        lease.forget_inherited()
    STATE.leases.clear()
    # The parent's runner pools are not the child's: keeping them would hide every core of
    # its slot from the pools it starts. The threads that ran their tasks, or managed their
    # executors, did not survive.
    STATE.live_pools.clear()
    STATE.claim_channels.clear()
    STATE.running_tasks.clear()
    STATE.running_lock = threading.Lock()
    # Nor are its claim failure and its lease keeper (whose thread did not survive).
    STATE.claim_error = None
    STATE.keeper = None


_platform.forget_in_forked_child(_forget_in_forked_child)
