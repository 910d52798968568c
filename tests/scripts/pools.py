"""An ordinary program using one pool type under one start method; prints what workers saw.

Usage: python pools.py KIND METHOD [TASKS]  (KIND: pool, threadpool, processpool, threadexec;
METHOD: fork, spawn, forkserver). It knows nothing about pinbackend except the report
function, which reads back each thread's CPUs and the BLAS pools' sizes.
"""

import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.pool import ThreadPool

import numpy as np

from pinbackend.diagnostics import process_report

SEEN = []


def remember(tag):
    """A user initializer: it must still run in every worker (and says where it ran)."""
    SEEN.append(tag)
    SEEN.append(sorted(os.sched_getaffinity(0)))


def task(delay):
    np.ones((64, 64)) @ np.ones((64, 64))  # make sure BLAS is loaded
    time.sleep(delay)
    report = process_report()
    report["initializer"] = list(SEEN)
    report["ppid"] = os.getppid()
    # Forked workers share the parent's __main__; spawned and forkserver ones re-import it.
    report["main_module"] = sys.modules["__main__"].__name__
    # What this very thread sees (masks and OpenMP caps are per thread).
    from threadpoolctl import threadpool_info

    report["this_thread"] = {
        "tid": threading.get_native_id(),
        "mask": sorted(os.sched_getaffinity(0)),
        "blas": max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
    }
    return report


def main():
    kind, method = sys.argv[1], sys.argv[2]
    tasks = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    context = multiprocessing.get_context(method)
    args = [0.3] * tasks
    if kind == "pool":
        with context.Pool(initializer=remember, initargs=("user-init",)) as pool:
            reports = pool.map(task, args)
    elif kind == "threadpool":
        with ThreadPool(initializer=remember, initargs=("user-init",)) as pool:
            reports = pool.map(task, args)
            size = pool._processes
    elif kind == "processpool":
        with ProcessPoolExecutor(
            mp_context=context, initializer=remember, initargs=("user-init",)
        ) as executor:
            reports = list(executor.map(task, args))
    elif kind == "threadexec":
        with ThreadPoolExecutor(initializer=remember, initargs=("user-init",)) as executor:
            reports = list(executor.map(task, args))
            size = executor._max_workers
    else:
        raise SystemExit(f"unknown pool kind {kind!r}")
    main_report = process_report()
    main_report["this_thread_mask"] = sorted(os.sched_getaffinity(0))
    print(
        json.dumps(
            {
                "workers": reports,
                "main": main_report,
                "thread_pool_size": size if kind.startswith("thread") else None,
            }
        )
    )


if __name__ == "__main__":
    main()
