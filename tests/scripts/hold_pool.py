"""Start a pool, print its workers' reports as one JSON line, keep it until stdin closes.

Usage: python hold_pool.py METHOD — a stand-in for a long job that occupies cores.
"""

import json
import multiprocessing
import sys
import time

from pinbackend.diagnostics import process_report


def task(delay):
    time.sleep(delay)
    return process_report()


if __name__ == "__main__":
    with multiprocessing.get_context(sys.argv[1]).Pool() as pool:
        reports = pool.map(task, [0.3] * 2 * len(pool._pool))
        print(json.dumps(reports), flush=True)
        sys.stdin.read()
