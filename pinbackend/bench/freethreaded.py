"""Threads or processes, with and without the GIL (issue 22).

Run on a free-threaded CPython (``tox -e ft`` builds one), with ``PINBACKEND_BENCH_GIL_PYTHON``
naming a Python that has the GIL, so that one benchmark run measures, side by side and
interleaved round by round:

* ``pinned-threads``, ``threading`` and ``loky`` on the free-threaded build;
* ``pinned-threads-gil`` and ``loky-gil``: the same, in a measurement that the GIL build
  runs (:meth:`GilBuild.command`), with the same workload and sizes.

The workloads:

* ``pycpu``: pure-Python CPU tasks, which hold the GIL where there is one;
* ``solve-svd``: the small BLAS tasks where pinned threads lost to loky under the GIL
  (a 700x700 product, solve and SVD per task, 4 tasks per worker);
* ``ft-blas``, ``ft-eig``, ``ft-hgb``: workloads 1, 8a and 8b with these strategies.

On a build with the GIL and without ``PINBACKEND_BENCH_GIL_PYTHON``, the ``-gil`` cells are
"unavailable" (the plain strategies are the GIL build's numbers then).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from typing import Any

from .strategies import JoblibStrategy, Strategy, register_strategy
from .workloads import WORKLOADS, Workload, _map_and_time, measure_blas, register_workload

__all__ = ["GIL_PYTHON_ENV", "GilBuild", "measure_pycpu", "python_task"]

#: Names the interpreter (with the GIL) that the ``-gil`` strategies' measurements run on.
GIL_PYTHON_ENV = "PINBACKEND_BENCH_GIL_PYTHON"


def python_task(n: int, seed: int = 0) -> int:
    """Pure-Python CPU work: ``n`` integer hashes counted in a dict of this task's own.

    Workers unpickle it by reference to this module, which imports neither scikit-learn
    nor Dask."""
    counts: dict[int, int] = {}
    for i in range(seed, seed + n):
        key = (i * 2654435761) % 97
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values())


def measure_pycpu(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """Independent pure-Python tasks, ``tasks_per_worker`` per worker."""
    n_tasks = params["tasks_per_worker"] * n_jobs
    args = [(params["n"], seed) for seed in range(n_tasks)]
    warmup = [(1000, seed) for seed in range(2 * n_jobs)]
    return _map_and_time(strategy, n_jobs, window, python_task, args, warmup)


def _describe_pycpu(params, n_jobs) -> str:
    return (
        f"{params['tasks_per_worker'] * n_jobs} tasks of {params['n']:,} pure-Python dict updates"
    )


def _describe_solve_svd(params, n_jobs) -> str:
    return (
        f"{params['tasks_per_worker'] * n_jobs} tasks, each {params['reps']} x "
        f"({params['size']}x{params['size']} matmul + solve) + SVD"
    )


class GilBuild(JoblibStrategy):
    """A joblib strategy whose measurement runs on the interpreter ``PINBACKEND_BENCH_GIL_PYTHON``
    names (a build with the GIL), for side-by-side runs from a free-threaded build."""

    def unavailable(self) -> str | None:
        """Why no GIL build can be run (the variable unset, or naming no interpreter)."""
        python = os.environ.get(GIL_PYTHON_ENV)
        if not python:
            same = (
                f"; this build has the GIL: {self.backend_name} measures it" if _has_gil() else ""
            )
            return f"set {GIL_PYTHON_ENV} to a Python with the GIL{same}"
        if shutil.which(python) is None:
            return f"{GIL_PYTHON_ENV}={python!r} is not an interpreter found here"
        return None

    @property
    def backend_name(self) -> str:
        """The strategy this one runs on the GIL build."""
        return self.name.removesuffix("-gil")

    def command(self, python: str) -> list[str]:
        """The GIL build, in place of the benchmark's own interpreter."""
        return [os.environ.get(GIL_PYTHON_ENV) or python, "-m", "pinbackend.bench._child"]


def _has_gil() -> bool:
    return not sysconfig.get_config_var("Py_GIL_DISABLED") or sys._is_gil_enabled()


for _strategy in (
    GilBuild(
        "pinned-threads-gil",
        "pinned",
        "pinned threads, GIL build",
        f"pinned threads on the Python {GIL_PYTHON_ENV} names (with the GIL)",
        prefer="threads",
    ),
    GilBuild(
        "loky-gil",
        "loky",
        "joblib loky, GIL build",
        f"joblib's loky on the Python {GIL_PYTHON_ENV} names (with the GIL)",
    ),
):
    register_strategy(_strategy)

#: Thread pools against loky, on this build and on a GIL build.
_FT = ("sequential", "threading", "pinned-threads", "loky", "pinned-threads-gil", "loky-gil")

for _workload in (
    Workload(
        name="pycpu",
        number="10a",
        title="Pure-Python tasks",
        metric="time",
        strategies=_FT,
        params={
            "quick": {"tasks_per_worker": 4, "n": 300_000},
            "full": {"tasks_per_worker": 4, "n": 2_000_000},
        },
        timeout={"quick": 30.0, "full": 90.0},
        measure=measure_pycpu,
        describe=_describe_pycpu,
        in_quick=False,
        pinned="pinned-threads",
        baseline="loky",
        notes="threads run Python in parallel only without the GIL",
    ),
    Workload(
        name="solve-svd",
        number="10b",
        title="Small BLAS tasks (700x700 solve + SVD)",
        metric="time",
        strategies=_FT,
        params={
            "quick": {"tasks_per_worker": 4, "size": 700, "reps": 1},
            "full": {"tasks_per_worker": 4, "size": 700, "reps": 1},
        },
        timeout={"quick": 30.0, "full": 60.0},
        measure=measure_blas,
        describe=_describe_solve_svd,
        in_quick=False,
        pinned="pinned-threads",
        baseline="loky",
        notes="where pinned threads were 1.32x slower than loky under the GIL (2026-12-06)",
    ),
    *(
        dataclasses.replace(
            WORKLOADS[name],
            name=f"ft-{name}",
            number=f"10{letter}",
            strategies=_FT,
            quick_strategies=None,
            in_quick=False,
            pinned="pinned-threads",
            baseline="loky",
        )
        for name, letter in (("blas", "c"), ("eig", "d"), ("hgb", "e"))
    ),
):
    register_workload(_workload)
