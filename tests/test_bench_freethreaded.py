"""The free-threaded comparison's pieces of the benchmark (pinbackend.bench.freethreaded)."""

from __future__ import annotations

import sys

from pinbackend.bench.freethreaded import GIL_PYTHON_ENV, python_task
from pinbackend.bench.strategies import get_strategy
from pinbackend.bench.workloads import WORKLOADS


def test_gil_strategies_run_their_measurement_on_the_interpreter_named(monkeypatch):
    strategy = get_strategy("pinned-threads-gil")
    monkeypatch.delenv(GIL_PYTHON_ENV, raising=False)
    assert GIL_PYTHON_ENV in strategy.unavailable()
    monkeypatch.setenv(GIL_PYTHON_ENV, "/no/such/python")
    assert "is not an interpreter found here" in strategy.unavailable()
    monkeypatch.setenv(GIL_PYTHON_ENV, sys.executable)
    assert strategy.unavailable() is None
    assert strategy.command("python-of-the-bench") == [
        sys.executable,
        "-m",
        "pinbackend.bench._child",
    ]
    assert strategy.prefer == "threads" and get_strategy("loky-gil").prefer is None


def test_the_free_threaded_workloads_compare_threads_and_loky_on_both_builds():
    for name in ("pycpu", "solve-svd", "ft-blas", "ft-eig", "ft-hgb"):
        workload = WORKLOADS[name]
        assert {"pinned-threads", "loky", "pinned-threads-gil", "loky-gil"} <= set(
            workload.strategies
        )
        assert not workload.in_quick  # CI's quick run stays as it was
    assert WORKLOADS["ft-eig"].measure is WORKLOADS["eig"].measure
    assert python_task(1000, 3) == python_task(1000, 3) > 0
