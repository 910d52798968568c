"""Pinned threads against loky on BLAS tasks of several sizes: which wins where, and why.

    python tools/small_blas_sweep.py [--sizes 200,400,700,1000,1500] [--rounds 9]

Each measurement runs in a fresh interpreter (this one; run it with a free-threaded build
to measure that build): a warm 2-worker pool, then 8 tasks of
``pinbackend.bench.tasks.blas_task(size, reps)`` timed. Strategies take turns round after
round; printed per size: the median time of each, the median of the paired ratios
(pinned threads / loky), and per task its median wall time, the CPU time of the thread
that ran it (wall above CPU: the task waited, for a lock or for a core) and its minor page
faults.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

STRATEGIES = {"pinned-threads": ("pinned", "threads"), "loky": ("loky", None)}


def timed_task(size: int, reps: int, seed: int) -> tuple[float, float, int]:
    """One BLAS task; its wall time, this thread's CPU time and minor page faults."""
    from pinbackend.bench.tasks import blas_task

    before = resource.getrusage(resource.RUSAGE_THREAD)
    wall, cpu = time.perf_counter(), time.thread_time()
    blas_task(size, reps, seed)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    return (
        time.perf_counter() - wall,
        time.thread_time() - cpu,
        after.ru_minflt - before.ru_minflt,
    )


def measure(strategy: str, size: int, reps: int, tasks: int) -> dict:
    """In a fresh interpreter: one warm pool, ``tasks`` tasks timed."""
    from joblib import Parallel, delayed

    import pinbackend

    backend, prefer = STRATEGIES[strategy]
    with Parallel(n_jobs=2, backend=backend, prefer=prefer) as parallel:
        parallel(delayed(timed_task)(size, 1, seed) for seed in range(4))
        start = time.perf_counter()
        results = parallel(delayed(timed_task)(size, reps, seed) for seed in range(tasks))
        wall = time.perf_counter() - start
    pinbackend.shutdown_workers()
    return {"wall": wall, "tasks": results}


def main() -> None:
    """Parse the options, run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,400,700,1000,1500")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        strategy, size = args.child.split(":")
        print(json.dumps(measure(strategy, int(size), args.reps, args.tasks)))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    runs: dict = {}
    for round_ in range(args.rounds):
        for size in sizes:
            order = list(STRATEGIES) if round_ % 2 == 0 else list(STRATEGIES)[::-1]
            for strategy in order:
                child = [sys.executable, __file__, "--child", f"{strategy}:{size}"]
                child += ["--reps", str(args.reps), "--tasks", str(args.tasks)]
                out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                runs.setdefault((size, strategy), []).append(json.loads(out.splitlines()[-1]))
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"Python {sys.version.split()[0]}, GIL {'on' if gil else 'off'}, {args.rounds} rounds")
    print("size  strategy        median s  threads/loky  task wall ms  task CPU ms  minflt")
    for size in sizes:
        ratios = [
            t["wall"] / lk["wall"]
            for t, lk in zip(runs[size, "pinned-threads"], runs[size, "loky"], strict=True)
        ]
        for strategy in STRATEGIES:
            done = runs[size, strategy]
            tasks = [task for run in done for task in run["tasks"]]
            print(
                f"{size:5d} {strategy:15s} {statistics.median(r['wall'] for r in done):8.3f}"
                f"  {f'{statistics.median(ratios):.2f}' if strategy == 'loky' else '':>12s}"
                f"  {statistics.median(t[0] for t in tasks) * 1e3:12.1f}"
                f"  {statistics.median(t[1] for t in tasks) * 1e3:11.1f}"
                f"  {statistics.median(t[2] for t in tasks):6.0f}"
            )


if __name__ == "__main__":
    main()
