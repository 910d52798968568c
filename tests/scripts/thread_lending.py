"""Does lending pay in a pinned thread pool? One BLAS task (a call's tail) on a pool of
``n_jobs`` pinned threads, with lending (the default) and without (``fixed_slots=True``),
side by side: rounds interleaved, the order alternating, medians reported (issue 21, item 2;
docs/how-it-works.md, "Lending idle cores").

    python tests/scripts/thread_lending.py                 # 7 rounds, 1000x1000, 20 products
    python tests/scripts/thread_lending.py --rounds 3 --size 600 --reps 40 --tasks 3
    python tests/scripts/thread_lending.py --costs     # what a task start, widen, narrow cost

Each round times one ``Parallel(n_jobs, backend="pinned", prefer="threads")`` call of
``--tasks`` tasks (1: one task on an idle pool; ``n_jobs + 1``: a call whose last task runs
alone). Run it on a quiet machine: the other engineers' work shows in the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from joblib import Parallel, delayed, parallel_config

import pinbackend  # noqa: F401  (registers the "pinned" backend)


def products(size: int, reps: int) -> float:
    a = np.random.default_rng(0).random((size, size))
    for _ in range(reps):
        a @ a
    return 0.0


def one_call(n_jobs: int, tasks: int, size: int, reps: int, **config) -> float:
    with parallel_config(backend="pinned", other_pins="ignore", **config):
        start = time.perf_counter()
        Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(products)(size, reps) for _ in range(tasks)
        )
        return time.perf_counter() - start


def costs(repeats: int = 200) -> dict:
    """Medians (µs), in a pool thread of a lending pool of 2 with numpy's OpenBLAS loaded:
    a task's start and end with no loan out (what every task pays), a widen (the watch's
    look), and the narrowing a task start does when a loan is out."""
    from pinbackend.host.options import PinOptions
    from pinbackend.host.threads import PinnedThreadPool, plan_thread_shares, run_capped

    options = PinOptions(other_pins="ignore")
    pool = PinnedThreadPool(plan_thread_shares(2, options, "costs", report=False), lend=True)

    def measure() -> dict:
        loans, share = pool._loans, pool.shares[0]
        found: dict[str, list[float]] = {"task start+end": [], "widen": [], "narrow": []}
        for _ in range(repeats):
            start = time.perf_counter()
            loans.task_ends()
            loans.task_starts(share)
            found["task start+end"].append(time.perf_counter() - start)
            loans._quiet_since = 0.0  # as if the task had run alone for long
            start = time.perf_counter()
            loans.look()
            found["widen"].append(time.perf_counter() - start)
            assert loans.lent
            start = time.perf_counter()
            loans.task_starts(share)  # a start with a loan out narrows first
            found["narrow"].append(time.perf_counter() - start)
        return {key: round(statistics.median(v) * 1e6, 1) for key, v in found.items()}

    try:
        return pool.apply(run_capped, (measure,))
    finally:
        pool.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--n-jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--costs", action="store_true")
    args = parser.parse_args()
    if args.costs:
        print(json.dumps(costs()))
        return
    one_call(args.n_jobs, 2 * args.n_jobs, args.size, 1)  # warm: BLAS helpers started
    modes = {"lending": {}, "fixed_slots": {"fixed_slots": True}}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        order = list(modes) if round_ % 2 == 0 else list(modes)[::-1]
        for mode in order:
            times[mode].append(
                one_call(args.n_jobs, args.tasks, args.size, args.reps, **modes[mode])
            )
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    print(json.dumps({"args": vars(args), "times": times, "medians": medians}))
    ratio = medians["lending"] / medians["fixed_slots"]
    print(
        f"lending {medians['lending']:.3f} s, fixed_slots {medians['fixed_slots']:.3f} s "
        f"(medians of {args.rounds}): {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
