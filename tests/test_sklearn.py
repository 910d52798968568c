"""Unmodified scikit-learn code under the "pinned" backend gives the same results."""

from __future__ import annotations

import numpy as np
import pytest
from joblib import parallel_backend
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


def test_kmeans(data):
    X, _ = data

    def fit():
        return KMeans(n_clusters=3, n_init=3, random_state=0).fit(X).cluster_centers_

    np.testing.assert_allclose(under("pinned", fit), under("default", fit))
