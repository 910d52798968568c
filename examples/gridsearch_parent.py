"""Why GridSearchCV(PCA + LogisticRegression) looked slower on "pinned" than on loky.

Run: python examples/gridsearch_parent.py   (PINBACKEND_EXAMPLE_SMALL=1 for a quick run)

It is also a plugin for ``python -m pinbackend bench --plugin gridsearch_parent`` (with this
folder on PYTHONPATH): it measures with the benchmark's machinery, each fit in a fresh
process, strategies interleaved round after round, CPU used by other processes recorded.

* ``gridsearch-restart``: the fit runs right after a fit on the *other* backend in the same
  process, as in a loop that alternates backends. loky keeps one reusable executor per
  process, so every switch starts new workers, which import scikit-learn again: the timing
  is mostly worker start-up.
* ``gridsearch-warm``: the fit runs on a warm pool (what the benchmark measures).
  ``*-parent1`` strategies also start the calling process with one BLAS thread. The caller
  refits the best model itself after the search; its idle OpenBLAS threads then spin for a
  while and take CPU time from the workers, pinned or not.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from pinbackend.bench.strategies import JoblibStrategy, register_strategy
from pinbackend.bench.workloads import Workload, register_workload

SMALL = os.environ.get("PINBACKEND_EXAMPLE_SMALL") == "1"
OTHER = {"loky": "pinned", "pinned": "loky"}


def _fit(X, y, cv: int):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(PCA(n_components=20), LogisticRegression(max_iter=500))
    return GridSearchCV(model, {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}, cv=cv).fit(X, y)


def _data(params):
    from sklearn.datasets import make_classification

    return make_classification(
        n_samples=params["n_samples"], n_features=params["n_features"], random_state=0
    )


def measure_warm(strategy, n_jobs, params, window) -> dict:
    """One fit on a pool warmed up by a small fit on the same backend."""
    X, y = _data(params)
    with strategy.joblib_config(n_jobs):
        _fit(X[:200], y[:200], 2)
        window.start()
        _fit(X, y, params["cv"])
        window.stop()
    return {}


def measure_restart(strategy, n_jobs, params, window) -> dict:
    """One fit right after a fit on the other backend (the pool restarts in between)."""
    from joblib import parallel_config

    X, y = _data(params)
    with parallel_config(backend=OTHER[strategy.backend], n_jobs=n_jobs):
        _fit(X, y, params["cv"])
    with strategy.joblib_config(n_jobs):
        window.start()
        _fit(X, y, params["cv"])
        window.stop()
    return {}


def _parent_capped(name: str, backend: str) -> JoblibStrategy:
    strategy = JoblibStrategy(
        name, backend, f"{backend}, caller 1 BLAS thread", f"{backend}; caller's BLAS capped to 1"
    )
    strategy.process_threads = 1  # set before the caller starts: its OpenBLAS has no threads
    return strategy


register_strategy(_parent_capped("loky-parent1", "loky"))
register_strategy(_parent_capped("pinned-parent1", "pinned"))

_PARAMS = {
    "quick": {"n_samples": 1000, "n_features": 50, "cv": 3},
    "full": {"n_samples": 4000, "n_features": 200, "cv": 5},  # examples/sklearn_gridsearch.py
}
register_workload(
    Workload(
        name="gridsearch-restart",
        number="G1",
        title="GridSearchCV right after the other backend",
        metric="time",
        strategies=("loky", "pinned"),
        params=_PARAMS,
        timeout={"quick": 60.0, "full": 60.0},
        measure=measure_restart,
        describe=lambda p, n: f"PCA + LogisticRegression, 4 C x {p['cv']} folds, pool restarts",
    )
)
register_workload(
    Workload(
        name="gridsearch-warm",
        number="G2",
        title="GridSearchCV on a warm pool",
        metric="time",
        strategies=("sequential", "loky", "pinned", "loky-parent1", "pinned-parent1"),
        params=_PARAMS,
        timeout={"quick": 60.0, "full": 60.0},
        measure=measure_warm,
        describe=lambda p, n: f"PCA + LogisticRegression, 4 C x {p['cv']} folds, warm pool",
    )
)


def main() -> None:
    from pinbackend.bench import BenchConfig, format_table, run_benchmark, summarize
    from pinbackend.bench.report import cell_runs, paired, robust_median

    # Measurements import this file as a plugin module: put its folder on their path.
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, here)
    config = BenchConfig(
        mode="quick" if SMALL else "full",
        repeats=1 if SMALL else 7,
        workloads=("gridsearch-restart", "gridsearch-warm"),
        plugins=("gridsearch_parent",),
        retry_noisy=0 if SMALL else 2,  # a shared machine: measure disturbed runs again
    )
    doc = run_benchmark(config, progress=lambda line: print(line, file=sys.stderr))
    summary = summarize(doc)
    print(format_table(doc, summary))
    print("\nwhere the CPU time goes (medians per fit):")
    print(f"  {'workload / strategy':<36} {'caller CPU':>10} {'workers CPU':>11}  migrations w/m")
    for workload, cells in summary.items():
        for strategy in cells:
            runs = [r for r in cell_runs(doc, workload, strategy) if r["status"] == "ok"]
            if not runs:
                continue
            windows = [r["window"] for r in runs]
            caller = statistics.median(w["main"]["cpu_s"] for w in windows)
            workers = statistics.median(w["workers"]["cpu_s"] for w in windows)
            migrations = statistics.median(w["workers"]["migrations"] for w in windows)
            main_migrations = statistics.median(w["main"]["migrations"] for w in windows)
            print(
                f"  {workload + ' / ' + strategy:<36} {caller:>9.3f}s {workers:>10.3f}s"
                f"  {migrations:.0f}/{main_migrations:.0f}"
            )
    print("\npinned / loky, median of the ratios of runs made in the same round:")
    for workload, a, b in (
        ("gridsearch-restart", "pinned", "loky"),
        ("gridsearch-warm", "pinned", "loky"),
        ("gridsearch-warm", "pinned-parent1", "loky-parent1"),
        ("gridsearch-warm", "pinned-parent1", "pinned"),
    ):
        ratios = paired(doc, workload, a, b)
        if ratios:
            each = " ".join(f"{r:.2f}" for r in sorted(ratios))
            print(f"  {workload}: {a} / {b} = {robust_median(ratios):.3f}  ({each})")


if __name__ == "__main__":
    main()
