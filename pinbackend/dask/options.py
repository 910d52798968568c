"""What a Dask worker's slot should look like: the arithmetic. Pure.

The options are the package's one :class:`~pinbackend.host.options.PinOptions`, shared with
the joblib backend and the runner. Nothing here imports distributed.
"""

from __future__ import annotations

import math

from ..core.topology import Topology
from ..host.options import (
    DEFAULT_CLAIM_TIMEOUT,
    FAIL_POLICIES,
    OVERSUBSCRIBE_POLICIES,
    OptionsError,
    PinOptions,
)

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "FAIL_POLICIES",
    "OVERSUBSCRIBE_POLICIES",
    "PinOptions",
    "host_shape",
    "slot_cores_for",
    "task_thread_cap",
]


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
        raise OptionsError(
            f"slot size and nthreads must be positive; got {slot_size} CPUs, {nthreads} threads"
        )
    return max(1, slot_size // nthreads)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def host_shape(fit: int, nthreads: int, cores: int, cpus: str) -> str:
    """The shape that fits a host, for the one warning a host gives and the placement view.

    ``fit`` workers of ``nthreads`` task threads fit ``cores`` physical cores (CPUs ``cpus``).

    >>> host_shape(2, 1, 2, "0-1")
    "2 workers x 1 thread fit this host's 2 cores (CPUs 0-1)"
    >>> host_shape(1, 2, 2, "0-1")
    "1 worker x 2 threads fits this host's 2 cores (CPUs 0-1)"
    >>> host_shape(0, 4, 2, "0-1")
    "no worker x 4 threads fits this host's 2 cores (CPUs 0-1)"
    """
    workers = _count(fit, "worker") if fit else "no worker"
    verb = "fit" if fit > 1 else "fits"
    return (
        f"{workers} x {_count(nthreads, 'thread')} {verb} this host's "
        f"{_count(cores, 'core')} (CPUs {cpus})"
    )
