"""A pool whose workers are replaced after every task; prints every worker's report."""

import json
import multiprocessing
import sys

from pinbackend.diagnostics import process_report


def task(_):
    return process_report()


if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    with context.Pool(2, maxtasksperchild=1) as pool:
        reports = pool.map(task, range(6), chunksize=1)
    print(json.dumps(reports))
