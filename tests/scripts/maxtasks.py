"""A process pool whose workers are replaced after every task; prints every worker's report.

Usage: python maxtasks.py METHOD [KIND]  (KIND: pool, multiprocessing.Pool with
maxtasksperchild=1, the default; processpool, ProcessPoolExecutor with max_tasks_per_child=1,
which refuses the fork method).
"""

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from pinbackend.diagnostics import process_report

TASKS = 6


def task(_):
    return process_report()


if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    kind = sys.argv[2] if len(sys.argv) > 2 else "pool"
    if kind == "pool":
        with context.Pool(2, maxtasksperchild=1) as pool:
            reports = pool.map(task, range(TASKS), chunksize=1)
    elif kind == "processpool":
        with ProcessPoolExecutor(2, mp_context=context, max_tasks_per_child=1) as executor:
            reports = list(executor.map(task, range(TASKS)))
    else:
        raise SystemExit(f"unknown pool kind {kind!r}")
    print(json.dumps(reports))
