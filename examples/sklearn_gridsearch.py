"""Unmodified scikit-learn code on the "pinned" backend: placement and time vs joblib's default.

Run: python examples/sklearn_gridsearch.py   (PINBACKEND_EXAMPLE_SMALL=1 for a quick run)
"""

from __future__ import annotations

import os
import statistics
import time

from joblib import Parallel, delayed, parallel_backend
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

import pinbackend

SMALL = os.environ.get("PINBACKEND_EXAMPLE_SMALL") == "1"


def grid_search(X, y, cv: int = 3 if SMALL else 5) -> float:
    """Fit a GridSearchCV exactly as user code would; return the wall time."""
    search = GridSearchCV(
        make_pipeline(PCA(n_components=20), LogisticRegression(max_iter=500)),
        {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]},
        cv=cv,
    )
    start = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - start


def placement(n_jobs: int) -> None:
    """Ask every pinned worker where it runs (the pool is reused from the fit)."""
    reports = Parallel()(delayed(pinbackend.process_report)() for _ in range(8 * n_jobs))
    for report in sorted({r["pid"]: r for r in reports}.values(), key=lambda r: r["affinity"]):
        blas = [p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "blas"]
        print(f"  worker pid {report['pid']}: CPUs {report['affinity']}, BLAS threads {blas}")


def main() -> None:
    n_samples, n_features = (600, 60) if SMALL else (4000, 200)
    X, y = make_classification(n_samples=n_samples, n_features=n_features, random_state=0)
    n_jobs = -1
    times = {"default (loky)": [], "pinned": []}
    for _ in range(1 if SMALL else 5):  # interleaved, so both see the same machine state
        for name, backend in (("default (loky)", "loky"), ("pinned", "pinned")):
            with parallel_backend(backend, n_jobs=n_jobs):
                # Switching backends restarts joblib's one reusable pool, and the new
                # workers import scikit-learn: an untimed small fit keeps that start-up
                # (seconds, most of the time otherwise measured) out of the comparison.
                grid_search(X[:200], y[:200], cv=2)
                times[name].append(grid_search(X, y))
    with parallel_backend("pinned", n_jobs=n_jobs):
        print("pinned workers:")
        placement(len(os.sched_getaffinity(0)))
    for name, values in times.items():
        median, runs = statistics.median(values), " ".join(f"{v:.2f}" for v in values)
        print(f"{name:>15}: median {median:.2f} s over {len(values)} runs ({runs})")
    ratio = statistics.median(times["pinned"]) / statistics.median(times["default (loky)"])
    print(f"pinned / default: {ratio:.2f}")
    pinbackend.shutdown_workers()


if __name__ == "__main__":
    main()
