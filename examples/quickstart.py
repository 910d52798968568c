"""Quick start: see the machine, plan disjoint core sets, run BLAS work on pinned workers.

Run: python examples/quickstart.py   (PINBACKEND_EXAMPLE_SMALL=1 for a quick run)
"""

from __future__ import annotations

import os
import time

import numpy as np
from joblib import Parallel, delayed

import pinbackend
from pinbackend.cli.render import describe_plan, describe_topology

SMALL = os.environ.get("PINBACKEND_EXAMPLE_SMALL") == "1"


def blas_task(size: int, reps: int) -> dict:
    """Many medium-sized BLAS/LAPACK calls (where spinning BLAS threads hurt most), then
    where this worker ran and how many BLAS threads it had."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size)), rng.random((size, size))
    for _ in range(reps):
        a @ b
        np.linalg.solve(a + size * np.eye(size), b)
    return pinbackend.process_report()


def timed(backend: str, reps: int, n_tasks: int) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    reports = Parallel(n_jobs=-1, backend=backend)(
        delayed(blas_task)(128, reps) for _ in range(n_tasks)
    )
    return time.perf_counter() - start, reports


def main() -> None:
    topology = pinbackend.read_topology()
    print(describe_topology(topology))
    view = topology.restrict(topology.allowed)
    plan = pinbackend.plan_slots(topology)
    print(f"\nplan for n_jobs=-1 ({plan.n_workers} workers):")
    print(describe_plan(view, plan.slots))

    reps, n_tasks = (20, 8) if SMALL else (100, 16)
    pinned_time, reports = timed("pinned", reps, n_tasks)
    print("\npinned workers (read back from inside each worker):")
    for report in sorted({r["pid"]: r for r in reports}.values(), key=lambda r: r["affinity"]):
        threads = {tuple(cpus) for cpus in report["threads"].values()}
        blas = [p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "blas"]
        print(
            f"  pid {report['pid']}: CPUs {report['affinity']}, all {len(report['threads'])} "
            f"threads on {sorted(threads)}, BLAS threads {blas}"
        )
    pinbackend.shutdown_workers()
    # joblib's "multiprocessing" backend leaves BLAS uncapped: every worker starts as many
    # BLAS threads as the machine has cores (the common naive case).
    naive_time, _ = timed("multiprocessing", reps, n_tasks)
    print(f"\n{n_tasks} BLAS tasks, n_jobs=-1:")
    print(f"  pinned                              {pinned_time:6.2f} s")
    ratio = naive_time / pinned_time
    print(f"  multiprocessing (BLAS not capped)   {naive_time:6.2f} s  ({ratio:.1f}x pinned)")


if __name__ == "__main__":
    main()
