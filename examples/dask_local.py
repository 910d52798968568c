"""Dask on one machine: a LocalCluster whose workers each get their own cores.

Run: python examples/dask_local.py   (PINBACKEND_EXAMPLE_SMALL=1 for the CI smoke size)

It starts worker processes, registers pinbackend once (its nanny half puts the thread caps
in each worker's spawn environment, its worker half pins), prints the placement view (each
host's shape; cores, threads and BLAS/OpenMP caps per worker, measured inside a task) and
runs a small BLAS workload that reports where each task ran. The same cluster across
machines is two commands; see docs/dask.md:

    dask scheduler --host 0.0.0.0
    dask worker tcp://SCHEDULER:8786 --nworkers 2 --preload-nanny pinbackend --preload pinbackend
"""

from __future__ import annotations

import os
import time

from distributed import Client, LocalCluster

import pinbackend
from pinbackend.dask import PinPlugin, format_placement, placement

SMALL = os.environ.get("PINBACKEND_EXAMPLE_SMALL") == "1"


def blas_task(size: int, seed: int) -> dict:
    """Multiply two random matrices; say where it ran and how many BLAS threads it had."""
    import numpy
    from threadpoolctl import threadpool_info

    rng = numpy.random.default_rng(seed)
    a, b = rng.random((size, size)), rng.random((size, size))
    start = time.perf_counter()
    for _ in range(3):
        a = (a @ b) / size
    return {
        "pid": os.getpid(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "blas_threads": max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    topology = pinbackend.read_topology()
    n_cores = len(topology.restrict(topology.allowed).cores)
    n_workers = min(2, n_cores)
    # One task thread per worker, each worker half the cores: its BLAS calls use them all.
    plugin = PinPlugin(cores_per_worker=n_cores // n_workers)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        # One registration: workers spawned without the caps (distributed's default is 1
        # BLAS thread; these get n_cores // n_workers) are restarted with them, then each
        # is pinned to its own cores.
        client.register_plugin(plugin)

        print(format_placement(placement(client)))

        size, n_tasks = (200, 4) if SMALL else (1000, 8)
        print(f"\n{n_tasks} tasks, each 3 products of {size}x{size} matrices:")
        for result in client.gather(client.map(blas_task, [size] * n_tasks, range(n_tasks))):
            print(
                f"  pid {result['pid']}: CPUs {result['cpus']}, "
                f"{result['blas_threads']} BLAS thread(s), {result['seconds']:.2f} s"
            )


if __name__ == "__main__":
    main()
