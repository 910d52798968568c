"""The nanny's part: the environment a worker process is spawned with.

Thread-count variables only work if they are set before a library loads, and distributed
imports numpy while the worker process unpickles its start function, before any worker
plugin or preload runs. The nanny is the last place that runs before that.
"""

from __future__ import annotations

import logging

from ..core.sysfs import read_topology
from ..core.topology import Topology
from ..host.caps import thread_env
from .options import PinOptions, slot_cores_for, task_thread_cap

__all__ = ["configure_nanny", "spawn_env"]

logger = logging.getLogger("distributed.nanny.pinbackend")


def spawn_env(nthreads: int, topology: Topology, options: PinOptions) -> dict[str, str]:
    """Thread-count variables for a worker with ``nthreads`` task threads about to start.

    The worker does not know its slot yet; every slot it can claim has the same number of
    cores, so the cap is computed for the narrowest cores of this host (the worker raises
    it at run time if its slot turns out wider).
    """
    cores = slot_cores_for(nthreads, topology, options)
    allowed = topology.restrict(topology.allowed)
    narrowest = min((len(core) for core in allowed.cores), default=1)
    return thread_env(task_thread_cap(cores * narrowest, nthreads))


def configure_nanny(nanny, options: PinOptions) -> dict[str, str]:
    """Make ``nanny`` spawn its workers with the thread caps of ``options``; return them.

    ``nanny.env`` is set in the worker process before the Worker object is built;
    ``nanny.pre_spawn_env`` is put into the nanny's own environment just before the spawn,
    where numpy's BLAS reads it. Only the variables distributed already sets there by
    default (OMP, MKL, OpenBLAS) are changed, so a LocalCluster in a user's process is not
    left with more variables than distributed itself leaves.
    """
    env = spawn_env(nanny.nthreads, read_topology(), options)
    nanny.env.update(env)
    for name in nanny.pre_spawn_env.keys() & env.keys():
        nanny.pre_spawn_env[name] = env[name]
    logger.info("pinbackend: nanny %s starts workers with %s", nanny.address_safe, _summary(env))
    return env


def _summary(env: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(env.items()))
