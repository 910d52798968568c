"""Pin every thread of the current process to a core set, and verify it from the kernel.

``sched_setaffinity`` acts on one thread: threads that already run (a BLAS or OpenMP pool
started at import, Dask's event loop and executor) keep their old mask. So :func:`pin`
applies the mask to every thread id of the process, repeats until no new thread appears,
then reads every mask back.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from .. import _platform
from .._docs import troubleshooting
from ..core.cpuset import format_cpu_list
from .state import STATE

__all__ = ["PinningError", "PinningUnavailableWarning", "pin", "pin_or_warn"]

_MAX_ROUNDS = 20


class PinningError(RuntimeError):
    """Pinning was possible but the threads did not end up on the requested CPUs."""


class PinningUnavailableWarning(UserWarning):
    """CPU affinity cannot be set here; only thread caps are applied."""


def _check_cores(cores: Iterable[int]) -> frozenset[int]:
    cores = frozenset(cores)
    if not cores or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in cores):
        raise PinningError(
            f"cores must be a non-empty set of CPU numbers (non-negative integers); "
            f"got {sorted(cores, key=str)!r}"
        )
    return cores


def pin(cores: Iterable[int]) -> frozenset[int]:
    """Pin every thread of this process to ``cores``; return them once verified.

    Raises :class:`PinningError` if a thread's mask read back differs (for example CPUs
    outside this process's cgroup cpuset, which the kernel silently drops), and
    :class:`pinbackend._platform.AffinityUnavailable` where affinity is unsupported or
    forbidden.
    """
    cores = _check_cores(cores)
    done: set[int] = set()
    for _ in range(_MAX_ROUNDS):
        new = set(_platform.list_thread_ids()) - done
        if not new:
            break
        for tid in sorted(new):
            try:
                _platform.set_thread_affinity(tid, cores)
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            except _platform.AffinityUnavailable:
                raise
            except OSError as error:
                raise PinningError(
                    f"cannot pin to CPUs {format_cpu_list(cores)}: {error.strerror or error}; "
                    f"allowed CPUs here are {format_cpu_list(_platform.allowed_cpus())}"
                ) from error
        done |= new
    else:
        raise PinningError("threads keep appearing faster than they can be pinned")
    _verify(cores)
    return cores


def _verify(cores: frozenset[int]) -> None:
    for tid in _platform.list_thread_ids():
        try:
            actual = _platform.get_thread_affinity(tid)
        except OSError:
            continue  # the thread ended meanwhile
        if actual != cores:
            raise PinningError(
                f"thread {tid} runs on CPUs {format_cpu_list(actual)} instead of "
                f"{format_cpu_list(cores)} after pinning; CPUs outside this process's "
                f"cpuset ({format_cpu_list(_platform.allowed_cpus())}) cannot be used"
            )


def pin_or_warn(cores: Iterable[int]) -> bool:
    """Pin like :func:`pin`; where affinity is unavailable, warn once and return False."""
    try:
        pin(cores)
    except _platform.AffinityUnavailable as error:
        if STATE.warn_once("pinning-unavailable"):
            warnings.warn(
                f"CPU pinning is unavailable here ({error}); pinbackend caps thread pools "
                f"only, so workers may migrate between cores. See "
                f"{troubleshooting('pinning-unavailable')}",
                PinningUnavailableWarning,
                stacklevel=2,
            )
        return False
    return True
