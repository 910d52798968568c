"""What a Dask worker's slot should look like: the arithmetic. Pure.

The options are the package's one :class:`~pinbackend.host.options.PinOptions`, shared with
the joblib backend and the runner. Nothing here imports distributed.
"""

from __future__ import annotations

import math

from ..core.topology import Topology
from ..host.options import DEFAULT_CLAIM_TIMEOUT, FAIL_POLICIES, OptionsError, PinOptions

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "FAIL_POLICIES",
    "PinOptions",
    "PinOptionsError",
    "slot_cores_for",
    "task_thread_cap",
]

#: The Dask spelling of the one options error (kept for compatibility).
PinOptionsError = OptionsError


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
