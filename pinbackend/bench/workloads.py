"""The benchmark's workloads: what is run, at which size, under which strategies.

Each :class:`Workload` carries its sizes for ``quick`` and ``full`` mode, the strategies it
is measured with, and a ``measure`` function that runs inside a measurement's own
interpreter: it sets up (data, a warm-up that starts the pool and imports the libraries in
the workers), calls ``window.start()``, runs the timed part, calls ``window.stop()``.
Everything before ``window.start()`` is outside the timing and outside the timeout.

The functions are importable, so the docs and users can run a workload by hand::

    from pinbackend.bench.workloads import WORKLOADS
    WORKLOADS["blas"].params["full"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import tasks
from .strategies import Strategy

__all__ = [
    "METRICS",
    "MODES",
    "WORKLOADS",
    "Window",
    "Workload",
    "get_workload",
    "register_workload",
]

MODES = ("quick", "full")
#: ``time``: seconds for a fixed amount of work; ``throughput``: the same, reported as tasks
#: per second; ``start``: seconds from no pool to every worker having answered.
METRICS = ("time", "throughput", "start")


class Window(Protocol):
    """The measured window, handed to :attr:`Workload.measure` by the measurement harness."""

    def start(self) -> None:
        """Setup is done: start the clock, the timeout and the kernel counters."""

    def stop(self) -> None:
        """The timed part is done."""


Measure = Callable[[Strategy, int, Mapping[str, Any], Window], dict]


@dataclass(frozen=True)
class Workload:
    """One benchmark workload (see the module docstring)."""

    name: str
    number: str
    title: str
    metric: str
    strategies: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    timeout: Mapping[str, float]
    measure: Measure
    describe: Callable[[Mapping[str, Any], int], str]
    #: Strategies measured in quick mode (None: all of them).
    quick_strategies: tuple[str, ...] | None = None
    #: Whether quick mode runs this workload at all.
    in_quick: bool = True
    #: A process the measurement starts beside the job: ``"busy"`` (a spinning process
    #: pinned to the last CPU, unknown to pinbackend) or ``"daemon"`` (a process holding a
    #: pinbackend lease on the last CPU through ``pinbackend run``).
    neighbour: str | None = None
    #: The strategy that stands for pinbackend here, and the default it must not lose to.
    pinned: str = "pinned"
    baseline: str = "loky"
    #: A child cgroup the measurement runs in, e.g. ``{"quota": 1.0}`` (a CPU quota in CPUs,
    #: as in a container); where none can be made, the runs are ``unavailable``, saying why.
    cgroup: Mapping[str, float] | None = None
    #: Strategies known to hang here, with the reason shown instead of the time. After one
    #: timeout such a cell is not measured again.
    hangs: Mapping[str, str] = field(default_factory=dict)
    #: What the docs and the table say about this workload.
    notes: str = ""

    def strategies_for(self, mode: str) -> tuple[str, ...]:
        """The strategies measured in ``mode``."""
        if mode == "quick" and self.quick_strategies is not None:
            return self.quick_strategies
        return self.strategies


WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    """Add ``workload`` to the registry (replacing one of the same name); return it."""
    if workload.metric not in METRICS:
        raise ValueError(
            f"workload {workload.name!r}: metric must be one of {', '.join(METRICS)}; "
            f"got {workload.metric!r}"
        )
    missing = [m for m in MODES if m not in workload.params or m not in workload.timeout]
    if missing:
        raise ValueError(f"workload {workload.name!r}: no params/timeout for mode(s) {missing}")
    WORKLOADS[workload.name] = workload
    return workload


def get_workload(name: str) -> Workload:
    """The registered workload called ``name``; a clear error naming the known ones."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise KeyError(
            f"unknown workload {name!r}; known workloads: {', '.join(WORKLOADS)}"
        ) from None


# -- map workloads: a list of independent tasks -----------------------------------------


def _jobs(params: Mapping[str, Any], n_jobs: int) -> int:
    """Worker count the job asks for: the workload's own (-1 for "all free cores") or ours."""
    return params.get("n_jobs", n_jobs)


def _map_and_time(strategy, n_jobs, window, func, args, warmup) -> dict:
    with strategy.open(n_jobs) as runner:
        # Starts the workers, imports numpy in them and grows their BLAS pools, so that the
        # window times the work, not the start (which workload 6 times on its own).
        runner.map(func, warmup)
        window.start()
        runner.map(func, args)
        window.stop()
    return {"tasks": len(args)}


def _blas_args(params, n_jobs):
    n_tasks = params["tasks_per_worker"] * max(n_jobs, 1)
    return [(params["size"], params["reps"], seed) for seed in range(n_tasks)]


def measure_blas(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """Independent BLAS tasks (workloads 1, 4, 5a, 5b)."""
    jobs = _jobs(params, n_jobs)
    args = _blas_args(params, n_jobs)
    if not strategy.runs_job:
        with strategy.open(jobs) as runner:
            window.start()
            runner.map(tasks.blas_task, [])
            window.stop()
        return {"tasks": 0}
    warmup = [(params["size"], 2, seed) for seed in range(2 * n_jobs)]
    return _map_and_time(strategy, jobs, window, tasks.blas_task, args, warmup)


def _describe_blas(params, n_jobs) -> str:
    n_tasks = params["tasks_per_worker"] * n_jobs
    return (
        f"{n_tasks} tasks, each {params['reps']} x ({params['size']}x{params['size']} "
        f"matmul + solve) + SVD"
    )


def measure_container(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """BLAS tasks with ``n_jobs=-1`` inside a cgroup with a CPU quota (workload 7).

    The same tasks as :func:`measure_blas`; the CPU budget the measurement sees from inside
    is recorded with them, next to the worker processes each strategy started (counted by
    the window's sampler).
    """
    from ..host.budget import read_budget

    extra = measure_blas(strategy, n_jobs, params, window)
    return {**extra, "budget_cpus": read_budget().cpus}


def measure_nested(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """Outer tasks each running an inner ``Parallel(n_jobs=-1)`` over BLAS tasks."""
    inner, size, reps = params["inner"], params["size"], params["reps"]
    n_outer = params["outer_per_worker"] * n_jobs
    args = [(inner, size, reps, seed) for seed in range(n_outer)]
    warmup = [(inner, size, 2, seed) for seed in range(n_jobs)]
    return _map_and_time(strategy, n_jobs, window, tasks.nested_task, args, warmup)


def _describe_nested(params, n_jobs) -> str:
    return (
        f"{params['outer_per_worker'] * n_jobs} outer tasks x inner Parallel(n_jobs=-1) over "
        f"{params['inner']} BLAS tasks of {params['reps']} x {params['size']}^2 matmul + solve"
    )


def measure_tiny(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """Thousands of tasks that do nothing: dispatch throughput."""
    args = [(i,) for i in range(params["tasks"])]
    warmup = [(i,) for i in range(200)]
    return _map_and_time(strategy, n_jobs, window, tasks.tiny_task, args, warmup)


def measure_pool_start(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """From no pool to every one of ``n_jobs`` workers having run a task."""
    window.start()
    with strategy.open(n_jobs) as runner:
        seen: set = set()
        rounds = 0
        # A worker that starts early can take every task of the first round: keep asking
        # until each worker has answered (the pool is then fully up), within reason.
        while len(seen) < n_jobs and rounds < params["max_rounds"]:
            seen.update(runner.map(tasks.worker_id, [()] * n_jobs))
            rounds += 1
        window.stop()
    return {"workers_seen": len(seen), "rounds": rounds}


# -- workloads that call joblib themselves (scikit-learn) -------------------------------


def measure_sklearn(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """``GridSearchCV(PCA + LogisticRegression)``: the model of the known gap."""
    from sklearn.datasets import make_classification
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    X, y = make_classification(
        n_samples=params["n_samples"],
        n_features=params["n_features"],
        n_informative=params["n_features"] // 4,
        random_state=0,
    )

    def fit(X, y, cv):
        model = make_pipeline(
            PCA(n_components=params["components"]), LogisticRegression(max_iter=500)
        )
        return GridSearchCV(model, {"logisticregression__C": params["C"]}, cv=cv).fit(X, y)

    with strategy.joblib_config(n_jobs):
        fit(X[:200], y[:200], 2)  # starts the workers and imports scikit-learn in them
        window.start()
        search = fit(X, y, params["cv"])
        window.stop()
    return {"best_score": round(float(search.best_score_), 6)}


def _describe_sklearn(params, n_jobs) -> str:
    return (
        f"GridSearchCV(PCA({params['components']}) + LogisticRegression), "
        f"{len(params['C'])} C x {params['cv']} folds on {params['n_samples']}x"
        f"{params['n_features']}"
    )


def measure_kmeans(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """``GridSearchCV(KMeans)``: scikit-learn code whose fit uses OpenMP."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.model_selection import GridSearchCV

    X, _ = make_blobs(
        n_samples=params["n_samples"], n_features=params["n_features"], centers=8, random_state=0
    )

    def fit(X, cv):
        model = KMeans(n_init=params["n_init"], random_state=0)
        return GridSearchCV(model, {"n_clusters": params["clusters"]}, cv=cv).fit(X)

    with strategy.joblib_config(n_jobs):
        # The warm-up's refit runs KMeans in this process, as a user's earlier fit would:
        # its OpenMP runtime is up before the timed run forks (if the strategy forks).
        fit(X[:300], 2)
        window.start()
        search = fit(X, params["cv"])
        window.stop()
    return {"best_n_clusters": int(search.best_params_["n_clusters"])}


def _describe_kmeans(params, n_jobs) -> str:
    return (
        f"GridSearchCV(KMeans(n_init={params['n_init']})), {len(params['clusters'])} "
        f"n_clusters x {params['cv']} folds on {params['n_samples']}x{params['n_features']}"
    )


def measure_eig(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """Independent ``np.linalg.eig`` tasks (the thread-pool benchmark of SciPy 2018)."""
    args = _blas_args(params, n_jobs)  # (size, reps, seed), as for the BLAS tasks
    warmup = [(params["size"], 1, seed) for seed in range(2 * n_jobs)]
    return _map_and_time(strategy, n_jobs, window, tasks.eig_task, args, warmup)


def _describe_eig(params, n_jobs) -> str:
    return (
        f"{params['tasks_per_worker'] * n_jobs} tasks, each {params['reps']} x "
        f"np.linalg.eig({params['size']}x{params['size']})"
    )


def measure_hgb(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """``cross_validate(HistGradientBoostingClassifier)`` on small data: each fit runs
    OpenMP, so parallel fits with uncapped OpenMP teams oversubscribe (scikit-learn#30662)."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_validate

    X, y = make_classification(
        n_samples=params["n_samples"], n_features=params["n_features"], random_state=0
    )
    model = HistGradientBoostingClassifier(max_iter=params["max_iter"], random_state=0)
    with strategy.joblib_config(n_jobs):
        cross_validate(model, X[:200], y[:200], cv=2, n_jobs=n_jobs)  # start the workers
        window.start()
        scores = cross_validate(model, X, y, cv=params["cv"], n_jobs=n_jobs)
        window.stop()
    return {"mean_score": round(float(scores["test_score"].mean()), 6)}


def _describe_hgb(params, n_jobs) -> str:
    return (
        f"cross_validate(HistGradientBoostingClassifier(max_iter={params['max_iter']})), "
        f"{params['cv']} folds on {params['n_samples']}x{params['n_features']}"
    )


def _describe_tiny(params, n_jobs) -> str:
    return f"{params['tasks']} tasks that return x + 1"


def _describe_start(params, n_jobs) -> str:
    return f"start {n_jobs} workers and get an answer from each"


_ALL_MAP = ("sequential", "handpool", "loky", "multiprocessing", "threading", "pinned")
#: Thread pools against process pools, for the workloads that compare them.
_THREADS = ("sequential", "threading", "pinned-threads", "loky", "pinned")
_BLAS_QUICK = {"tasks_per_worker": 4, "size": 128, "reps": 60}
_BLAS_FULL = {"tasks_per_worker": 4, "size": 128, "reps": 350}
_FORK_AFTER_OPENMP = (
    "hangs: the pool forks workers after this process started OpenMP threads (the refit), "
    "and libgomp is not fork-safe"
)

for _workload in (
    Workload(
        name="blas",
        number="1",
        title="BLAS tasks",
        metric="time",
        strategies=(*_ALL_MAP, "pinned-threads"),
        params={"quick": _BLAS_QUICK, "full": _BLAS_FULL},
        timeout={"quick": 10.0, "full": 60.0},
        measure=measure_blas,
        describe=_describe_blas,
        notes="uncapped BLAS threads of several processes spin against each other",
    ),
    Workload(
        name="nested",
        number="2",
        title="Nested Parallel",
        metric="time",
        strategies=_ALL_MAP,
        params={
            "quick": {"outer_per_worker": 2, "inner": 2, "size": 128, "reps": 60},
            "full": {"outer_per_worker": 2, "inner": 2, "size": 128, "reps": 350},
        },
        timeout={"quick": 10.0, "full": 60.0},
        measure=measure_nested,
        describe=_describe_nested,
        notes="the naive nested case is joblib multiprocessing outside, threads inside",
    ),
    Workload(
        name="sklearn",
        number="3",
        title="scikit-learn GridSearchCV (BLAS)",
        metric="time",
        strategies=("sequential", "loky", "multiprocessing", "threading", "pinned"),
        params={
            "quick": {
                "n_samples": 1500,
                "n_features": 100,
                "components": 20,
                "C": [0.01, 0.1, 1.0, 10.0],
                "cv": 3,
            },
            "full": {
                "n_samples": 20000,
                "n_features": 200,
                "components": 20,
                "C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
                "cv": 5,
            },
        },
        timeout={"quick": 30.0, "full": 90.0},
        measure=measure_sklearn,
        describe=_describe_sklearn,
    ),
    Workload(
        name="kmeans",
        number="3b",
        title="scikit-learn GridSearchCV (OpenMP)",
        metric="time",
        strategies=(
            "sequential",
            "loky",
            "multiprocessing",
            "threading",
            "pinned",
            "pinned-threads",
        ),
        params={
            "quick": {
                "n_samples": 5000,
                "n_features": 20,
                "n_init": 2,
                "clusters": [4, 8],
                "cv": 2,
            },
            "full": {
                "n_samples": 40000,
                "n_features": 30,
                "n_init": 3,
                "clusters": [4, 6, 8, 10],
                "cv": 3,
            },
        },
        timeout={"quick": 30.0, "full": 60.0},
        measure=measure_kmeans,
        describe=_describe_kmeans,
        in_quick=False,
        hangs={"multiprocessing": _FORK_AFTER_OPENMP},
    ),
    Workload(
        name="dask",
        number="4",
        title="Dask LocalCluster, BLAS tasks",
        metric="time",
        strategies=("sequential", "dask", "dask-pinned", "pinned"),
        params={"quick": _BLAS_QUICK, "full": _BLAS_FULL},
        timeout={"quick": 30.0, "full": 60.0},
        measure=measure_blas,
        describe=_describe_blas,
        pinned="dask-pinned",
        baseline="dask",
        notes="pinned (joblib) is shown for reference; the target compares Dask + PinPlugin",
    ),
    Workload(
        name="neighbour",
        number="5a",
        title="BLAS tasks beside a busy process",
        metric="time",
        strategies=("sequential", "handpool", "loky", "multiprocessing", "pinned"),
        quick_strategies=("sequential", "loky", "multiprocessing", "pinned"),
        params={"quick": _BLAS_QUICK, "full": _BLAS_FULL},
        # 20x the ~1.5 s of a pinned run (full mode; quick: 30x its ~0.3 s): enough to see
        # the bad mode of uncapped BLAS, which here often never finishes.
        timeout={"quick": 10.0, "full": 30.0},
        measure=measure_blas,
        describe=_describe_blas,
        neighbour="busy",
        notes="a process outside pinbackend's control spins on the last CPU",
    ),
    Workload(
        name="daemon",
        number="5b",
        title="BLAS tasks beside a leased daemon",
        metric="time",
        strategies=("none", "sequential", "loky", "multiprocessing", "pinned", "pinned-run"),
        quick_strategies=("none", "loky", "pinned", "pinned-run"),
        params={"quick": {**_BLAS_QUICK, "n_jobs": -1}, "full": {**_BLAS_FULL, "n_jobs": -1}},
        timeout={"quick": 20.0, "full": 30.0},
        measure=measure_blas,
        describe=lambda params, n_jobs: _describe_blas(params, n_jobs) + ", n_jobs=-1",
        neighbour="daemon",
        notes="a daemon holds a lease on the last CPU (pinbackend run); jobs use n_jobs=-1; "
        "pinned-run starts the job itself under pinbackend run -n 1",
    ),
    Workload(
        name="tiny",
        number="6a",
        title="Tiny tasks (dispatch throughput)",
        metric="throughput",
        strategies=("sequential", "handpool", "loky", "multiprocessing", "threading", "pinned"),
        quick_strategies=("loky", "multiprocessing", "pinned"),
        params={"quick": {"tasks": 20000}, "full": {"tasks": 100000}},
        timeout={"quick": 20.0, "full": 60.0},
        measure=measure_tiny,
        describe=_describe_tiny,
    ),
    Workload(
        name="start",
        number="6b",
        title="Pool start",
        metric="start",
        strategies=("handpool", "loky", "multiprocessing", "dask", "pinned"),
        quick_strategies=("loky", "pinned"),
        params={"quick": {"max_rounds": 50}, "full": {"max_rounds": 50}},
        timeout={"quick": 20.0, "full": 60.0},
        measure=measure_pool_start,
        describe=_describe_start,
    ),
    Workload(
        name="container",
        number="7",
        title="BLAS tasks in a container with a 1-CPU quota",
        metric="time",
        strategies=("inline", "loky", "pinned"),
        # Quick mode does half the tasks: plain numpy spins its BLAS threads against the
        # quota and takes several seconds even so.
        params={
            "quick": {**_BLAS_QUICK, "tasks_per_worker": 2, "n_jobs": -1},
            "full": {**_BLAS_FULL, "n_jobs": -1},
        },
        timeout={"quick": 20.0, "full": 90.0},
        measure=measure_container,
        describe=lambda params, n_jobs: _describe_blas(params, n_jobs) + ", n_jobs=-1",
        cgroup={"quota": 1.0},
        notes="a child cgroup with a 1-CPU quota (cpu.max or cpu.cfs_quota_us): how many "
        "workers n_jobs=-1 gives, and what their threads cost under the quota",
    ),
    Workload(
        name="eig",
        number="8a",
        title="np.linalg.eig in a thread pool",
        metric="time",
        strategies=_THREADS,
        quick_strategies=("threading", "pinned-threads"),
        params={
            "quick": {"tasks_per_worker": 4, "size": 256, "reps": 2},
            "full": {"tasks_per_worker": 8, "size": 256, "reps": 6},
        },
        timeout={"quick": 20.0, "full": 90.0},
        measure=measure_eig,
        describe=_describe_eig,
        pinned="pinned-threads",
        baseline="threading",
        notes="the SciPy 2018 composability benchmark: threads whose LAPACK calls each "
        "start a BLAS team sized to the machine",
    ),
    Workload(
        name="hgb",
        number="8b",
        title="HistGradientBoosting fits in parallel",
        metric="time",
        strategies=_THREADS,
        quick_strategies=("threading", "pinned-threads"),
        params={
            "quick": {"n_samples": 1000, "n_features": 20, "max_iter": 20, "cv": 4},
            "full": {"n_samples": 4000, "n_features": 20, "max_iter": 50, "cv": 8},
        },
        timeout={"quick": 30.0, "full": 120.0},
        measure=measure_hgb,
        describe=_describe_hgb,
        pinned="pinned-threads",
        baseline="threading",
        notes="every fit runs an OpenMP team: uncapped teams of parallel fits oversubscribe",
    ),
):
    register_workload(_workload)
