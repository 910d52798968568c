"""A pool whose tasks start pools of their own; prints what the inner workers saw.

Usage: python nested.py OUTER_METHOD INNER_METHOD [OUTER_KIND]  (OUTER_KIND: pool,
processpool, or process: a plain Process child, no pool, that starts a pool). Inner pools
are sized automatically, as most programs do.
"""

import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from pinbackend.diagnostics import process_report


def inner_task(delay):
    time.sleep(delay)
    return process_report()


def outer_task(inner_method):
    with multiprocessing.get_context(inner_method).Pool() as pool:
        inner = pool.map(inner_task, [0.3] * 4)
    return {"outer": process_report(), "inner": inner}


def report_to(queue, inner_method):
    queue.put(outer_task(inner_method))


def main():
    outer_method, inner_method = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "pool"
    context = multiprocessing.get_context(outer_method)
    if kind == "process":
        queue = context.Queue()
        child = context.Process(target=report_to, args=(queue, inner_method))
        child.start()
        results = [queue.get(timeout=120)]
        child.join()
    elif kind == "pool":
        with context.Pool() as pool:
            results = pool.map(outer_task, [inner_method] * len(pool._pool))
    else:
        with ProcessPoolExecutor(mp_context=context) as executor:
            results = list(executor.map(outer_task, [inner_method] * executor._max_workers))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
