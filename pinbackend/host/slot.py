"""Apply a slot to the current process: pin every thread, cap every pool, remember it; undo it.

Every entry point that pins a process of its own calls :func:`apply_slot` once it holds a
lease: joblib's and the runner's pool workers, Dask workers, and ``run`` before it execs its
command. It also records the slot so that nested parallelism inside the process plans within
the slot (and claims within the lease's scope) instead of the whole host. As threadpoolctl's
``threadpool_limits`` does, the slot it returns remembers what applying changed, and
:meth:`AppliedSlot.undo` puts it back (see :func:`pinbackend.host.lifecycle.release_slot`,
the one release: lease plus undo).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .. import _platform
from ..core.cpuset import format_cpu_list
from .caps import apply_caps, thread_env
from .leases import Lease
from .pinning import pin_or_warn, restore_affinity
from .state import STATE

__all__ = [
    "OWN_PROCESS_HOOKS",
    "SCOPE_ENV",
    "SLOT_ENV",
    "AppliedSlot",
    "SlotChanges",
    "apply_slot",
    "current_scope",
    "current_slot",
    "in_slot",
    "reset_current_slot",
    "slot_env",
]

#: Set for processes started inside a slot: nested pools claim inside this lease's scope.
SCOPE_ENV = "PINBACKEND_SCOPE"
#: Set for processes started inside a slot: the slot's CPUs, for diagnostics.
SLOT_ENV = "PINBACKEND_SLOT"

#: What else a slot's own process sets up (``apply_slot(own_process=True)``): each hook is
#: called with the slot's thread cap and returns what undoes it (or None). Adapters add theirs
#: on import, so that this package knows no framework (the joblib adapter's nested loky pools
#: share the slot's caps: :mod:`pinbackend.joblib_nested`).
OWN_PROCESS_HOOKS: list[Callable[[int], Callable[[], None] | None]] = []


class SlotChanges:
    """What applying a slot changed in this process, to put back: a stack of undo steps,
    run last first, once (as ``contextlib.ExitStack`` does)."""

    def __init__(self, steps: contextlib.ExitStack | None = None) -> None:
        self._steps = steps or contextlib.ExitStack()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def undo(self) -> None:
        """Run every undo step, last first; later calls do nothing. Every step runs even
        where one fails; the last failure is raised after them.

        A forked child, which inherited the slot instead of applying it, undoes nothing: what
        was there before is its parent's, and it stays inside the slot it was started in.
        """
        if os.getpid() != self._pid:
            return
        with self._lock:
            steps, self._steps = self._steps, contextlib.ExitStack()
        steps.close()


@dataclass(frozen=True)
class AppliedSlot:
    """The slot this process runs in, with what applying it changed (:meth:`undo`)."""

    cores: frozenset[int]
    threads: int
    pinned: bool
    lease_id: str | None
    caps: tuple[str, ...]
    changes: SlotChanges = field(default_factory=SlotChanges, repr=False, compare=False)

    def undo(self) -> None:
        """Put back what applying this slot changed in this process: every thread's CPUs
        (threads started since get the process's CPUs from before), the pools' caps, the
        environment variables and ``os.cpu_count``; forget it as this process's slot.

        Idempotent; in a forked child, which inherited the slot, it only forgets it. OpenMP's
        limit is per thread: it is put back in the calling thread, as :func:`apply_slot` set
        it in the thread that called it. Raises
        :class:`~pinbackend.host.pinning.PinningError` where a thread cannot have its CPUs
        back, once everything else is restored.
        """
        try:
            self.changes.undo()
        finally:
            if STATE.slot is not None and STATE.slot.changes is self.changes:
                STATE.slot = None

    def to_dict(self) -> dict:
        """Plain-data form (placement views, JSON)."""
        return {
            "cores": sorted(self.cores),
            "threads": self.threads,
            "pinned": self.pinned,
            "lease_id": self.lease_id,
            "caps": list(self.caps),
        }


def current_slot() -> AppliedSlot | None:
    """The slot applied in this process, or None outside pinbackend's workers."""
    return STATE.slot


def reset_current_slot() -> None:
    """Undo the slot applied in this process, if any (see :meth:`AppliedSlot.undo`)."""
    if STATE.slot is not None:
        STATE.slot.undo()


def in_slot() -> bool:
    """Whether this process runs inside a pinbackend slot (a pool worker or under ``run``)."""
    return STATE.slot is not None or bool(os.environ.get(SCOPE_ENV))


def current_scope() -> str:
    """Lease scope for claims made from this process ('' = the whole host)."""
    if STATE.slot is not None and STATE.slot.lease_id:
        return STATE.slot.lease_id
    return os.environ.get(SCOPE_ENV, "")


def slot_env(
    cores: Iterable[int],
    lease: Lease | None = None,
    threads: int | None = None,
    lower: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Environment for a process about to start inside ``cores``: thread caps and scope.

    The caps are ``threads``, by default the number of CPUs in ``cores`` (or the user's
    smaller values in ``lower``).
    """
    cores = frozenset(cores)
    env = thread_env(len(cores) if threads is None else threads, lower)
    env[SLOT_ENV] = format_cpu_list(cores)
    if lease is not None:
        env[SCOPE_ENV] = lease.lease_id
    return env


def apply_slot(
    cores: Iterable[int],
    *,
    lease: Lease | None = None,
    threads: int | None = None,
    own_process: bool = False,
    lower: Mapping[str, int] | None = None,
) -> AppliedSlot:
    """Pin every thread of this process to ``cores`` and cap its pools to ``threads``.

    ``threads`` defaults to the number of CPUs in the slot; ``lower`` holds thread-count
    variables the user set smaller, which are honoured. Where pinning is impossible one
    warning is emitted and the caps still apply. ``own_process`` is for processes
    pinbackend started itself (pool workers): there it also sets the slot's environment
    variables for future children and makes ``os.cpu_count()`` report the slot size, which
    ``multiprocessing.Pool()`` and many libraries use to size themselves, and runs
    :data:`OWN_PROCESS_HOOKS` (nested ``loky`` pools divide its caps among their workers).
    Never pass it in a user's own process.

    The slot returned remembers what this changed (:meth:`AppliedSlot.undo`). A slot
    already applied in this process is undone first, so that an undo always gives the
    process back as it was before any slot. Where applying fails, what it changed is put
    back before the error is raised.
    """
    cores = frozenset(cores)
    threads = len(cores) if threads is None else threads
    reset_current_slot()
    with contextlib.ExitStack() as steps:
        _remember_affinity(steps)
        pinned = pin_or_warn(cores)
        caps = apply_caps(threads, lower)
        steps.callback(caps.restore)
        if own_process:
            _set_env(steps, slot_env(cores, lease, threads, lower))
            steps.callback(setattr, os, "cpu_count", os.cpu_count)
            os.cpu_count = _fixed_cpu_count(len(cores))
            for hook in OWN_PROCESS_HOOKS:
                undo = hook(threads)
                if undo is not None:
                    steps.callback(undo)
        changes = SlotChanges(steps.pop_all())
    STATE.slot = AppliedSlot(
        cores=cores,
        threads=threads,
        pinned=pinned,
        lease_id=lease.lease_id if lease is not None else None,
        caps=tuple(caps.kinds),
        changes=changes,
    )
    return STATE.slot


def _remember_affinity(steps: contextlib.ExitStack) -> None:
    """Read every thread's CPUs, and the process's, to put back when ``steps`` close."""
    if not _platform.CAN_SET_AFFINITY:
        return  # nothing can move
    try:
        before = _platform.thread_affinities()
        process = _platform.main_thread_cpus()
    except OSError:
        return  # nothing can be read, so nothing will be known to move either
    steps.callback(_put_back_affinity, before, process)


def _put_back_affinity(before: Mapping[int, frozenset[int]], process: frozenset[int]) -> None:
    try:
        restore_affinity(before, process)
    except _platform.AffinityUnavailable:
        pass  # affinity could not be set at all: nothing moved


def _set_env(steps: contextlib.ExitStack, env: Mapping[str, str]) -> None:
    """Set ``env`` in ``os.environ``; put each variable's old value back (or remove it)
    when ``steps`` close."""
    before = {name: os.environ.get(name) for name in env}

    def put_back() -> None:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    steps.callback(put_back)
    os.environ.update(env)


def _fixed_cpu_count(count: int):
    def cpu_count() -> int:
        """Number of CPUs of this worker's pinbackend slot (patched in pool workers)."""
        return count

    return cpu_count
