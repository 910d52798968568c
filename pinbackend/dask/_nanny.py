"""The nanny's part: the environment a worker process is spawned with.

Thread-count variables only work if they are set before a library loads, and distributed
imports numpy while the worker process unpickles its start function, before any worker
plugin or preload runs. The nanny is the last place that runs before that.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from ..core.topology import Topology
from ..host.caps import thread_env
from ..host.machine import read_topology
from .options import PinOptions, slot_cores_for, task_thread_cap

__all__ = [
    "PLAN_ENV",
    "configure_nanny",
    "plan_mismatch",
    "running_worker",
    "spawn_cap",
    "spawn_env",
    "spawned_otherwise",
]

logger = logging.getLogger("distributed.nanny.pinbackend")

#: Set in every worker process the nanny part spawns: what it planned, so that the worker
#: part can tell when its own options plan otherwise (``dask worker`` gives the options
#: after ``--preload pinbackend`` to the worker preload only, not to ``--preload-nanny``).
PLAN_ENV = "PINBACKEND_DASK_NANNY_PLAN"


def spawn_cap(nthreads: int, topology: Topology, options: PinOptions) -> int:
    """BLAS/OpenMP threads per task thread for a worker with ``nthreads`` about to start.

    The worker does not know its slot yet; every slot it can claim has the same number of
    cores, so the cap is computed for the narrowest cores of this host (the worker raises
    it at run time if its slot turns out wider).
    """
    cores = slot_cores_for(nthreads, topology, options)
    allowed = topology.restrict(topology.allowed)
    narrowest = min((len(core) for core in allowed.cores), default=1)
    return task_thread_cap(cores * narrowest, nthreads)


def spawn_env(nthreads: int, topology: Topology, options: PinOptions) -> dict[str, str]:
    """Thread-count variables for a worker with ``nthreads`` task threads about to start
    (:func:`spawn_cap` threads each)."""
    return _cap_env(spawn_cap(nthreads, topology, options))


def _cap_env(cap: int) -> dict[str, str]:
    env = thread_env(cap)
    # Not a CPU budget: the process starts with the whole host to claim its slot from, and
    # pinbackend reads PYTHON_CPU_COUNT as a budget (a 2-core slot would not fit in 1).
    env.pop("PYTHON_CPU_COUNT", None)
    return env


def plan_mismatch(
    environ: Mapping[str, str], nthreads: int, topology: Topology, options: PinOptions
) -> str | None:
    """Why the nanny part spawned this worker with other caps than its own options give.

    None when no nanny part ran (``environ`` lacks :data:`PLAN_ENV`), when its record is
    not one it writes, or when both plan the same cap (options that differ but give the
    same threads change nothing). ``topology`` must be read before the worker is pinned,
    as the nanny read it.

    >>> from pinbackend.core.topology import Topology
    >>> smt2 = Topology.uniform(cores_per_l3=4, threads_per_core=2)
    >>> env = {PLAN_ENV: '{"cores_per_worker": null, "threads": 2}'}
    >>> plan_mismatch(env, 1, smt2, PinOptions()) is None  # auto: 1 core, 2 CPUs
    True
    >>> print(plan_mismatch(env, 1, smt2, PinOptions(cores_per_worker=2)))  # doctest: +ELLIPSIS
    its nanny planned cores-per-worker=auto ... 2 BLAS/OpenMP ... cores-per-worker=2 give 4
    >>> plan_mismatch({}, 1, smt2, PinOptions(cores_per_worker=2)) is None
    True
    """
    try:
        planned = json.loads(environ.get(PLAN_ENV, ""))
        theirs, their_cores = int(planned["threads"]), planned["cores_per_worker"]
    except (ValueError, TypeError, KeyError):
        return None
    ours = spawn_cap(nthreads, topology, options)
    if ours == theirs:
        return None
    return (
        f"its nanny planned cores-per-worker={_cores(their_cores)} and spawned it with "
        f"{theirs} BLAS/OpenMP thread(s) per task thread, its own options "
        f"cores-per-worker={_cores(options.cores_per_worker)} give {ours}"
    )


def _cores(cores_per_worker: int | None) -> str:
    return "auto" if cores_per_worker is None else str(cores_per_worker)


#: The variables distributed's nanny spawns workers with by default: a worker spawned with
#: other values than the cap it gets was started before the nanny part ran.
_SPAWN_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def spawned_otherwise(spawned: Mapping[str, str], env: Mapping[str, str]) -> bool:
    """Whether a worker spawned with ``spawned`` lacks the caps of ``env`` (a restart gives
    them to it; without one its pools keep the sizes they started with).

    >>> spawned_otherwise({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    ...                   {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    False
    >>> spawned_otherwise({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"})
    True
    """
    return any(spawned.get(name) != env.get(name) for name in _SPAWN_VARS if name in env)


def running_worker(nanny) -> bool:
    """Whether ``nanny`` has a worker process running now (not one about to start)."""
    from distributed.core import Status

    process = getattr(nanny, "process", None)
    return process is not None and getattr(process, "status", None) == Status.running


def configure_nanny(nanny, options: PinOptions) -> dict[str, str]:
    """Make ``nanny`` spawn its workers with the thread caps of ``options``; return them.

    ``nanny.env`` is set in the worker process before the Worker object is built;
    ``nanny.pre_spawn_env`` is put into the nanny's own environment just before the spawn,
    where numpy's BLAS reads it. Only the variables distributed already sets there by
    default (OMP, MKL, OpenBLAS) are changed, so a LocalCluster in a user's process is not
    left with more variables than distributed itself leaves. The worker process also gets
    :data:`PLAN_ENV` (in ``nanny.env`` only), for :func:`plan_mismatch`.
    """
    cap = spawn_cap(nanny.nthreads, read_topology(), options)
    env = _cap_env(cap)
    nanny.env.update(env)
    nanny.env[PLAN_ENV] = json.dumps({"cores_per_worker": options.cores_per_worker, "threads": cap})
    for name in nanny.pre_spawn_env.keys() & env.keys():
        nanny.pre_spawn_env[name] = env[name]
    logger.info("pinbackend: nanny %s starts workers with %s", nanny.address_safe, _summary(env))
    return env


def _summary(env: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(env.items()))
