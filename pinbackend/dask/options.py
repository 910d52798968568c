"""What a Dask worker's slot should look like: the options and the arithmetic. Pure.

Shared by :class:`~pinbackend.dask.PinPlugin`, :class:`~pinbackend.dask.PinNannyPlugin` and
the ``--preload pinbackend`` command line, so all three validate and compute the same way.
Nothing here imports distributed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..core.cpuset import CpuListError, format_cpu_list, parse_cpu_list
from ..core.topology import Topology

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "FAIL_POLICIES",
    "PinOptions",
    "PinOptionsError",
    "slot_cores_for",
    "task_thread_cap",
]

#: ``"closed"``: a worker that cannot be pinned refuses to start (the default).
#: ``"open"``: it logs one warning, runs unpinned and says so in the placement view.
FAIL_POLICIES = ("closed", "open")

#: Seconds a starting worker waits for a free slot: a restarted worker's predecessor may
#: still be exiting, holding its lease until the kernel closes its files.
DEFAULT_CLAIM_TIMEOUT = 30.0


class PinOptionsError(ValueError):
    """An option of the Dask integration has a value that is not allowed."""


@dataclass(frozen=True)
class PinOptions:
    """How each worker on a host sizes and claims its slot.

    ``cores_per_worker``: physical cores per worker; ``None`` gives each task thread one CPU
    (see :func:`slot_cores_for`). ``reserve``: CPUs no worker may use (e.g. for the
    scheduler). ``fail``: one of :data:`FAIL_POLICIES`. ``claim_timeout``: seconds to wait
    for a free slot before failing.
    """

    cores_per_worker: int | None = None
    reserve: frozenset[int] = field(default_factory=frozenset)
    fail: str = "closed"
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT

    def __post_init__(self) -> None:
        cores = self.cores_per_worker
        if cores is not None and (not _is_int(cores) or cores < 1):
            raise PinOptionsError(
                f"cores_per_worker must be a positive integer or None (one CPU per task "
                f"thread); got {cores!r}"
            )
        object.__setattr__(self, "reserve", _cpu_set("reserve", self.reserve))
        if self.fail not in FAIL_POLICIES:
            raise PinOptionsError(
                f"fail must be one of {', '.join(map(repr, FAIL_POLICIES))}; got {self.fail!r}"
            )
        timeout = self.claim_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise PinOptionsError(
                f"claim_timeout must be a number of seconds >= 0; got {timeout!r}"
            )
        object.__setattr__(self, "claim_timeout", float(timeout))

    def describe(self) -> str:
        """One line for logs: the options as the command line spells them."""
        cores = "auto" if self.cores_per_worker is None else self.cores_per_worker
        reserve = format_cpu_list(self.reserve) or "none"
        return (
            f"cores-per-worker={cores}, reserve={reserve}, fail={self.fail}, "
            f"claim-timeout={self.claim_timeout:g}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _cpu_set(name: str, value: Iterable[int] | str) -> frozenset[int]:
    if isinstance(value, str):
        try:
            return parse_cpu_list(value)
        except CpuListError as error:
            raise PinOptionsError(f"{name}: {error}") from None
    cpus = frozenset(value)
    bad = [c for c in cpus if not _is_int(c) or c < 0]
    if bad:
        raise PinOptionsError(
            f"{name} must be CPU numbers (non-negative integers) or a list like '0-3,8'; "
            f"got {sorted(bad, key=str)!r}"
        )
    return cpus


def slot_cores_for(nthreads: int, topology: Topology, options: PinOptions) -> int:
    """Physical cores a worker with ``nthreads`` task threads asks for.

    ``options.cores_per_worker`` when given; else just enough cores for one CPU per task
    thread (SMT siblings count as CPUs, as Dask's own ``nthreads`` defaults do).

    >>> from pinbackend.core.topology import Topology
    >>> smt2 = Topology.uniform(cores_per_l3=4, threads_per_core=2)
    >>> slot_cores_for(4, smt2, PinOptions()), slot_cores_for(3, smt2, PinOptions())
    (2, 2)
    >>> slot_cores_for(4, smt2, PinOptions(cores_per_worker=1))
    1
    """
    if options.cores_per_worker is not None:
        return options.cores_per_worker
    allowed = topology.restrict(topology.allowed)
    width = max((len(core) for core in allowed.cores), default=1)
    return max(1, math.ceil(nthreads / width))


def task_thread_cap(slot_size: int, nthreads: int) -> int:
    """BLAS/OpenMP threads per task thread so that ``nthreads`` tasks fill ``slot_size`` CPUs.

    Never below one: a worker with more task threads than CPUs gets one BLAS thread each.

    >>> task_thread_cap(4, 2), task_thread_cap(2, 2), task_thread_cap(3, 2), task_thread_cap(1, 4)
    (2, 1, 1, 1)
    """
    if slot_size < 1 or nthreads < 1:
        raise PinOptionsError(
            f"slot size and nthreads must be positive; got {slot_size} CPUs, {nthreads} threads"
        )
    return max(1, slot_size // nthreads)
