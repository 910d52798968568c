"""Apply a slot to the current process: pin every thread, cap every pool, remember it.

This is the one function every entry point (joblib workers, Dask workers, the runner) calls
once it holds a lease. It also records the slot so that nested parallelism inside the process
plans within the slot (and claims within the lease's scope) instead of the whole host.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..core.cpuset import format_cpu_list
from .caps import cap_threads, thread_env
from .leases import Lease
from .nested import share_caps_with_nested_loky
from .pinning import pin_or_warn
from .state import STATE

__all__ = [
    "SCOPE_ENV",
    "SLOT_ENV",
    "AppliedSlot",
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


@dataclass(frozen=True)
class AppliedSlot:
    """The slot this process runs in."""

    cores: frozenset[int]
    threads: int
    pinned: bool
    lease_id: str | None
    caps: tuple[str, ...]

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
    """Forget the applied slot (a process that left its slot)."""
    STATE.slot = None


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
    ``multiprocessing.Pool()`` and many libraries use to size themselves, and divides its caps
    among the workers of a nested ``loky`` pool. Never pass it in a user's own process.
    """
    cores = frozenset(cores)
    threads = len(cores) if threads is None else threads
    pinned = pin_or_warn(cores)
    caps = cap_threads(threads, lower)
    if own_process:
        os.environ.update(slot_env(cores, lease, threads, lower))
        os.cpu_count = _fixed_cpu_count(len(cores))
        share_caps_with_nested_loky(threads)
    STATE.slot = AppliedSlot(
        cores=cores,
        threads=threads,
        pinned=pinned,
        lease_id=lease.lease_id if lease is not None else None,
        caps=tuple(caps),
    )
    return STATE.slot


def _fixed_cpu_count(count: int):
    def cpu_count() -> int:
        """Number of CPUs of this worker's pinbackend slot (patched in pool workers)."""
        return count

    return cpu_count
