"""Unmodified scikit-learn code under the "pinned" backend gives the same results."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _helpers import openmp_threads, thread_masks
from _tasks import kmeans_fit
from joblib import Parallel, delayed, parallel_backend, parallel_config
from sklearn.cluster import KMeans
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

import pinbackend

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def stop_workers():
    yield
    pinbackend.shutdown_workers()


@pytest.fixture(scope="module")
def data():
    return make_classification(n_samples=300, n_features=20, n_informative=8, random_state=0)


def under(backend, fit):
    """Run ``fit`` under ``backend`` ("pinned" or joblib's default loky)."""
    if backend == "default":
        return fit()
    with parallel_backend(backend, n_jobs=2):
        return fit()


def test_grid_search(data):
    X, y = data

    def fit():
        search = GridSearchCV(
            make_pipeline(PCA(n_components=5), LogisticRegression()),
            {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]},
            cv=3,
            n_jobs=2,
        )
        search.fit(X, y)
        return search.best_params_, search.cv_results_["mean_test_score"]

    default, pinned = under("default", fit), under("pinned", fit)
    assert pinned[0] == default[0]
    np.testing.assert_allclose(pinned[1], default[1])


def test_cross_val_score_with_kmeans_features(data):
    X, y = data

    def fit():
        model = make_pipeline(KMeans(n_clusters=4, n_init=2, random_state=0), LogisticRegression())
        return cross_val_score(model, X, y, cv=4, n_jobs=-1)

    np.testing.assert_allclose(under("pinned", fit), under("default", fit))


def test_random_forest_n_jobs_minus_one(data):
    X, y = data

    def fit():
        forest = RandomForestClassifier(n_estimators=20, n_jobs=-1, random_state=0).fit(X, y)
        return forest.predict_proba(X)

    np.testing.assert_allclose(under("pinned", fit), under("default", fit))


def test_grid_search_over_kmeans(data):
    # KMeans (OpenMP inside) fitted in the workers, by unmodified scikit-learn code.
    X, _ = data

    def fit():
        search = GridSearchCV(
            KMeans(n_init=2, random_state=0), {"n_clusters": [2, 3, 4, 5]}, cv=3, n_jobs=2
        )
        search.fit(X)
        return search.best_params_, search.cv_results_["mean_test_score"]

    default, pinned = under("default", fit), under("pinned", fit)
    assert pinned[0] == default[0]
    np.testing.assert_allclose(pinned[1], default[1])


def per_worker_threads(fits) -> dict[int, dict]:
    """Threads each worker process created during its fits, with the CPUs they ran on."""
    created: dict[int, dict] = {}
    for fit in fits:
        created.setdefault(fit["report"]["pid"], {}).update(fit["threads"])
    return created


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 allowed CPUs")
def test_kmeans_in_workers_same_centers_and_openmp_capped_to_the_slot(data):
    # KMeans does not use joblib: its OpenMP team is sized by the worker's OpenMP cap. Ask
    # both backends for 2 threads per worker: loky gives 2 (the control: the census sees
    # the OpenMP thread its first fit starts), "pinned" never more than the slot's CPUs.
    X, _ = data

    def fits(backend):
        with parallel_config(backend=backend, n_jobs=2, inner_max_num_threads=2):
            return Parallel()(delayed(kmeans_fit)(X, 3, seed) for seed in range(4))

    default, pinned = fits("loky"), fits("pinned")
    for fit, expected in zip(pinned, default, strict=True):
        np.testing.assert_allclose(fit["centers"], expected["centers"])
    assert os.getpid() not in {fit["report"]["pid"] for fit in default + pinned}
    for fit in default:
        assert openmp_threads(fit["report"]) == {2}
    # Each loky worker's first fit starts libgomp's team: one thread besides the caller.
    assert {len(threads) for threads in per_worker_threads(default).values()} == {1}
    slots = {fit["report"]["pid"]: fit["report"]["affinity"] for fit in pinned}
    for fit in pinned:
        slot = fit["report"]["affinity"]
        assert thread_masks(fit["report"]) == {tuple(slot)}
        assert openmp_threads(fit["report"]) == {min(2, len(slot))}
    for pid, threads in per_worker_threads(pinned).items():
        assert len(threads) == min(2, len(slots[pid])) - 1
        assert all(set(cpus) <= set(slots[pid]) for cpus in threads.values())
