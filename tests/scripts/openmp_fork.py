"""Run scikit-learn's KMeans (GNU OpenMP) in the parent, then fork a pool that runs it too.

Usage: python openmp_fork.py pool|joblib. Under plain python with 'fork' this can hang
forever in the workers' first OpenMP region.
"""

import json
import multiprocessing
import os
import sys
import time

import numpy as np
from sklearn.cluster import KMeans

from pinbackend.diagnostics import process_report


def fit(seed):
    time.sleep(0.2)  # so that every worker gets a task
    data = np.random.default_rng(seed).random((2000, 10))
    KMeans(n_clusters=4, n_init=2, random_state=seed).fit(data)
    report = process_report()
    report["ppid"] = os.getppid()
    return report


if __name__ == "__main__":
    fit(0)  # an OpenMP parallel region in the parent: libgomp's threads now exist
    if sys.argv[1] == "pool":
        with multiprocessing.get_context("fork").Pool() as pool:
            reports = pool.map(fit, range(4))
    else:
        from joblib import Parallel, delayed

        reports = Parallel(n_jobs=-1, backend="multiprocessing")(delayed(fit)(s) for s in range(4))
    print(json.dumps({"main_pid": os.getpid(), "workers": reports}))
