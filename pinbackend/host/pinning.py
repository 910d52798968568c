"""Pin every thread of the current process to a core set, and verify it from the kernel.

``sched_setaffinity`` acts on one thread: threads that already run (a BLAS or OpenMP pool
started at import, Dask's event loop and executor) keep their old mask. So :func:`pin`
applies the mask to every thread id of the process, repeats until no new thread appears,
then reads every mask back. :func:`restore_affinity` puts every thread back on the CPUs
it had before, read with :func:`pinbackend._platform.thread_affinities`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping

from .. import _platform
from .._docs import troubleshooting
from ..core.cpuset import format_cpu_list
from .state import STATE

__all__ = ["PinningError", "PinningUnavailableWarning", "pin", "pin_or_warn", "restore_affinity"]

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
    _set_every_thread(lambda tid: cores)
    _verify(cores)
    return cores


def restore_affinity(before: Mapping[int, frozenset[int]], started_since: frozenset[int]) -> None:
    """Put every thread of this process back on its CPUs in ``before`` (thread id to CPUs,
    read before pinning); threads started since get ``started_since`` (the process's CPUs
    then: they inherited a pinned mask instead).

    Raises :class:`PinningError` where a thread cannot have its CPUs back (one went offline
    or left the cpuset meanwhile), once every other thread has had them.
    """
    failed: list[PinningError] = []
    _set_every_thread(lambda tid: before.get(tid, started_since), failed)
    if failed:
        raise failed[0]


def _set_every_thread(
    cpus_of: Callable[[int], frozenset[int]], failed: list[PinningError] | None = None
) -> None:
    """Set every thread's CPUs to ``cpus_of(tid)``, again for threads that appear meanwhile.

    A thread whose CPUs cannot be set raises :class:`PinningError` at once, or, given a
    ``failed`` list, is added to it and the other threads are still set.
    """
    done: set[int] = set()
    for _ in range(_MAX_ROUNDS):
        new = set(_platform.list_thread_ids()) - done
        if not new:
            return
        for tid in sorted(new):
            cpus = cpus_of(tid)
            try:
                _platform.set_thread_affinity(tid, cpus)
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            except _platform.AffinityUnavailable:
                raise
            except OSError as error:
                problem = PinningError(
                    f"cannot pin to CPUs {format_cpu_list(cpus)}: {error.strerror or error}; "
                    f"allowed CPUs here are {format_cpu_list(_platform.allowed_cpus())}"
                )
                if failed is None:
                    raise problem from error
                problem.__cause__ = error
                failed.append(problem)
        done |= new
    raise PinningError("threads keep appearing faster than they can be pinned")


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
