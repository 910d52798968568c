"""Demo 1: ``python -m pinbackend`` stops a plain multiprocessing program from oversubscribing.

The workload below is an ordinary program: a ``multiprocessing.Pool()`` running BLAS tasks.
Under plain python every worker's OpenBLAS starts one thread per core, so N workers run N x N
threads on N cores. Under the runner each worker owns one core, all its threads pinned there,
and its BLAS capped to 1 thread, without changing a line of the program. First, the plan the
runner would make on a bigger machine (a 64-CPU, 4-socket snapshot from hwloc's test suite).

Run: python examples/runner_pool.py   (PINBACKEND_EXAMPLE_SMALL=1 for a quick run)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SMALL = os.environ.get("PINBACKEND_EXAMPLE_SMALL") == "1"
SNAPSHOT = (
    Path(__file__).parent.parent / "tests" / "data" / "topologies" / "64amd64-4s2n4ca2co.tar.bz2"
)


PLAN_ARGS = ["-p", "8", "--reserve", "0", __file__]


def blas_task(size_and_reps: tuple[int, int]) -> dict:
    """Many medium-sized matrix products, then what this worker ran on."""
    import numpy as np

    from pinbackend.diagnostics import process_report

    size, reps = size_and_reps
    a = np.random.default_rng(0).random((size, size))
    for _ in range(reps):
        a @ a
    return process_report()


def workload() -> None:
    """The unmodified program: a default-sized pool of BLAS tasks."""
    reps, tasks = (30, 8) if SMALL else (200, 16)
    start = time.perf_counter()
    with multiprocessing.Pool() as pool:
        reports = pool.map(blas_task, [(160, reps)] * tasks)
    print(json.dumps({"seconds": time.perf_counter() - start, "reports": reports}))


def run_workload(*runner_args: str) -> dict:
    command = [sys.executable, *runner_args, __file__, "--workload"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def show(title: str, data: dict) -> None:
    print(f"\n{title}: {data['seconds']:.2f} s")
    for report in sorted({r["pid"]: r for r in data["reports"]}.values(), key=lambda r: r["pid"]):
        masks = sorted({tuple(cpus) for cpus in report["threads"].values()})
        blas = [p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "blas"]
        print(
            f"  worker {report['pid']}: {len(report['threads'])} threads on CPUs "
            f"{', '.join(str(list(m)) for m in masks)}; BLAS threads {blas}"
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as unpacked:
        with tarfile.open(SNAPSHOT) as archive:
            archive.extractall(unpacked, filter="tar")
        (root,) = [p for p in Path(unpacked).iterdir() if p.is_dir()]
        print("Plan for 8 workers on a 64-CPU, 4-package machine, one core kept for a daemon:")
        print("$ python -m pinbackend --dry-run --root SNAPSHOT -p 8 --reserve 0 job.py")
        plan = subprocess.run(
            [sys.executable, "-m", "pinbackend", "--dry-run", "--root", str(root), *PLAN_ARGS],
            capture_output=True,
            text=True,
            check=True,
        )
        print(plan.stdout)

    print(f"This machine: {os.cpu_count()} CPUs. The same program twice:")
    plain = run_workload()
    show("python job.py (BLAS not capped, workers float)", plain)
    pinned = run_workload("-m", "pinbackend")
    show("python -m pinbackend job.py (one core per worker, BLAS capped)", pinned)
    print(f"\nplain / pinned wall time: {plain['seconds'] / pinned['seconds']:.1f}x")


if __name__ == "__main__":
    if "--workload" in sys.argv:
        workload()
    else:
        main()
