"""The ways of running parallel work that the benchmark compares: one small class each.

A strategy is used inside a measurement's own interpreter (see :mod:`pinbackend.bench._child`).
It says what that interpreter's environment must hold before anything is imported
(:attr:`Strategy.process_threads`), how to start it (:meth:`Strategy.command`), and gives
either a *runner* that maps a function over argument tuples (:meth:`Strategy.open`) or a
joblib configuration for code that calls joblib itself, such as scikit-learn
(:meth:`Strategy.joblib_config`).

Adding a strategy is one class and one :func:`register_strategy` call, in this module or in
a plugin module named with ``bench --plugin MODULE`` (imported by the benchmark and by every
measurement). A strategy that needs its measurement started under a launcher overrides
:meth:`~Strategy.command` (``pinned-run`` starts it under ``pinbackend run``; the script
runner would fit the same way, with a plain ``multiprocessing.Pool`` in
:meth:`~Strategy.open`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

from ..joblib_backend import shutdown_workers

__all__ = [
    "STRATEGIES",
    "DaskDefault",
    "DaskPinned",
    "HandPinnedPool",
    "Inline",
    "JoblibStrategy",
    "NoJob",
    "PinnedUnderRun",
    "Runner",
    "Sequential",
    "Strategy",
    "get_strategy",
    "register_strategy",
]

Args = Sequence[tuple]


class Runner:
    """Runs a function over argument tuples on one strategy's workers; returns the results."""

    def map(self, func: Callable, args: Args) -> list:
        """``[func(*a) for a in args]``, in parallel as the strategy does it."""
        raise NotImplementedError


class Strategy:
    """One way of running parallel work. Subclasses set the class attributes below."""

    #: Key on the command line and in the JSON.
    name: ClassVar[str]
    #: Row label in the table.
    label: ClassVar[str]
    #: One sentence for ``bench --list`` and the docs.
    summary: ClassVar[str]
    #: Thread cap put in the measurement's environment before Python starts (None: leave
    #: BLAS/OpenMP at their defaults, as a user's program would have them).
    process_threads: ClassVar[int | None] = None
    #: False for the "no job" reference of the daemon workload.
    runs_job: ClassVar[bool] = True

    def unavailable(self) -> str | None:
        """Why this strategy cannot run here (a missing optional package), or None."""
        return None

    def command(self, python: str) -> list[str]:
        """The command line that starts a measurement of this strategy.

        The hook for strategies that must start the measurement under a launcher (the script
        runner would return ``[python, "-m", "pinbackend", <runner options>,
        "-m", "pinbackend.bench._child"]``).
        """
        return [python, "-m", "pinbackend.bench._child"]

    @contextlib.contextmanager
    def open(self, n_jobs: int) -> Iterator[Runner]:
        """Start this strategy's workers (``n_jobs`` of them) and yield a :class:`Runner`."""
        raise NotImplementedError(f"strategy {self.name!r} cannot map tasks")
        yield  # pragma: no cover

    @contextlib.contextmanager
    def joblib_config(self, n_jobs: int) -> Iterator[None]:
        """Make joblib calls made by library code (scikit-learn) use this strategy."""
        raise NotImplementedError(
            f"strategy {self.name!r} cannot run code that calls joblib itself; "
            f"list it only for workloads that map tasks"
        )
        yield  # pragma: no cover


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to the registry (replacing one of the same name); return it."""
    STRATEGIES[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; a clear error naming the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(
            f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGIES)} "
            f"(a plugin module given with --plugin can register more)"
        ) from None


class _SequentialRunner(Runner):
    def map(self, func: Callable, args: Args) -> list:
        from joblib import parallel_config

        # Nested Parallel calls inside the tasks must run inline too: one core in total.
        with parallel_config(backend="sequential"):
            return [func(*a) for a in args]


class Sequential(Strategy):
    """The reference: every task in the calling process, one BLAS/OpenMP thread."""

    name = "sequential"
    label = "sequential (1 thread)"
    summary = "all tasks one after the other in one process, BLAS/OpenMP capped to 1 thread"
    process_threads = 1

    @contextlib.contextmanager
    def open(self, n_jobs: int) -> Iterator[Runner]:
        """Yield a runner that calls the tasks inline (``n_jobs`` is ignored)."""
        yield _SequentialRunner()

    @contextlib.contextmanager
    def joblib_config(self, n_jobs: int) -> Iterator[None]:
        """joblib's sequential backend."""
        from joblib import parallel_config

        with parallel_config(backend="sequential"):
            yield


class Inline(Sequential):
    """Plain numpy in the calling process: every task inline, BLAS/OpenMP at their defaults.

    What a script that never heard of parallelism does; its BLAS sizes its pool from the
    CPUs it sees, not from a cgroup quota.
    """

    name = "inline"
    label = "plain numpy inline"
    summary = "all tasks one after the other in one process, BLAS/OpenMP threads at their defaults"
    process_threads = None


class _JoblibRunner(Runner):
    def __init__(self, parallel):
        self.parallel = parallel

    def map(self, func: Callable, args: Args) -> list:
        from joblib import delayed

        return self.parallel(delayed(func)(*a) for a in args)


class JoblibStrategy(Strategy):
    """A joblib backend used as a user would: ``Parallel(n_jobs, backend=...)``."""

    def __init__(
        self, name: str, backend: str, label: str, summary: str, prefer: str | None = None
    ):
        self.name, self.backend, self.label, self.summary = name, backend, label, summary
        self.prefer = prefer

    @contextlib.contextmanager
    def open(self, n_jobs: int) -> Iterator[Runner]:
        """One ``Parallel`` kept open, so every call reuses the same pool of workers."""
        from joblib import Parallel

        with Parallel(n_jobs=n_jobs, backend=self.backend, prefer=self.prefer) as parallel:
            yield _JoblibRunner(parallel)
        if self.backend in ("loky", "pinned"):
            shutdown_workers()

    @contextlib.contextmanager
    def joblib_config(self, n_jobs: int) -> Iterator[None]:
        """``parallel_config(backend=..., n_jobs=n_jobs)`` around the library code."""
        from joblib import parallel_config

        with parallel_config(backend=self.backend, n_jobs=n_jobs, prefer=self.prefer):
            yield
        if self.backend in ("loky", "pinned"):
            shutdown_workers()


class PinnedUnderRun(JoblibStrategy):
    """The pinned backend in a program started with ``python -m pinbackend run -n 1``.

    ``run`` leases one free core for the whole program, pins it and caps its thread pools;
    a pinned pool inside it stays within that core. This is the remedy for a job that gets
    a single free core (its pool would otherwise run inline in an unpinned, uncapped caller).
    """

    def __init__(self):
        super().__init__(
            "pinned-run",
            "pinned",
            "pinned, under pinbackend run",
            "the pinned backend in a program started with python -m pinbackend run -n 1",
        )

    def command(self, python: str) -> list[str]:
        """Start the measurement under ``pinbackend run -n 1``."""
        return [python, "-m", "pinbackend", "run", "-n", "1", "--", *super().command(python)]


def _pin_to_next_core(slots) -> None:
    """Hand-pinned pool initializer: take the next core off the queue and pin to it."""
    cores = slots.get(timeout=30)
    # The pool forks from a process whose BLAS has one thread: the main thread is the only
    # one, so pinning it pins every thread the worker will ever start.
    os.sched_setaffinity(0, cores)


class _PoolRunner(Runner):
    def __init__(self, pool):
        self.pool = pool

    def map(self, func: Callable, args: Args) -> list:
        return self.pool.starmap(func, args)


class HandPinnedPool(Strategy):
    """What an expert writes by hand: ``multiprocessing.Pool``, one worker pinned per core.

    The measurement process starts with BLAS/OpenMP capped to one thread, so the forked
    workers have one BLAS thread from the start; each worker pins itself to its own physical
    core in the initializer. This is the practical limit a pinned pool can reach here.
    """

    name = "handpool"
    label = "hand-pinned mp.Pool"
    summary = (
        "multiprocessing.Pool, each worker pinned to its own core by hand, BLAS at 1 thread "
        "from the start (the practical limit)"
    )
    process_threads = 1

    @contextlib.contextmanager
    def open(self, n_jobs: int) -> Iterator[Runner]:
        """Start ``n_jobs`` pinned workers (``fork`` where the OS has it)."""
        import multiprocessing as mp

        from ..host.machine import read_topology

        topology = read_topology()
        cores = [core & topology.allowed for core in topology.cores if core & topology.allowed]
        if n_jobs > len(cores):
            raise ValueError(
                f"the hand-pinned pool puts one worker per physical core; n_jobs={n_jobs} "
                f"but only {len(cores)} cores are allowed here; use --n-jobs {len(cores)}"
            )
        methods = mp.get_all_start_methods()
        context = mp.get_context("fork" if "fork" in methods else "spawn")
        slots = context.Queue()
        for core in cores[:n_jobs]:
            slots.put(set(core))
        with context.Pool(n_jobs, initializer=_pin_to_next_core, initargs=(slots,)) as pool:
            yield _PoolRunner(pool)


class _DaskRunner(Runner):
    def __init__(self, client):
        self.client = client

    def map(self, func: Callable, args: Args) -> list:
        if args and all(args):
            futures = self.client.map(func, *zip(*args, strict=True), pure=False)
        else:
            futures = [self.client.submit(func, *a, pure=False) for a in args]
        return self.client.gather(futures)


class DaskDefault(Strategy):
    """Dask's ``LocalCluster`` with one single-threaded worker process per core.

    That is what ``LocalCluster()`` picks by itself on machines of up to 4 cores; it is set
    explicitly so that every strategy runs ``n_jobs`` workers. Dask's nannies cap
    OMP/MKL/OpenBLAS to one thread in workers by default (``pre-spawn-environ``).
    """

    name = "dask"
    label = "Dask LocalCluster"
    summary = "dask.distributed LocalCluster, one 1-thread worker process per core (its defaults)"

    def unavailable(self) -> str | None:
        """Missing dask.distributed."""
        if importlib.util.find_spec("distributed") is None:
            return "needs dask.distributed: pip install 'pinbackend[bench]'"
        return None

    def prepare(self, client) -> None:
        """Called once the cluster runs, before any task: nothing for plain Dask."""

    @contextlib.contextmanager
    def open(self, n_jobs: int) -> Iterator[Runner]:
        """Start the cluster and a client; close both afterwards."""
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=n_jobs,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        try:
            with Client(cluster) as client:
                self.prepare(client)
                yield _DaskRunner(client)
        finally:
            cluster.close()


class DaskPinned(DaskDefault):
    """The same cluster with pinbackend's ``PinPlugin`` registered.

    The nanny plugin is registered with ``restart=True`` so that workers restart with their
    BLAS pools sized from the start, as a user following the Dask docs page would do.
    """

    name = "dask-pinned"
    label = "Dask + PinPlugin"
    summary = "the same LocalCluster with pinbackend.dask.PinPlugin registered"

    def prepare(self, client) -> None:
        """Register the worker and nanny plugins and wait until every worker is back."""
        from pinbackend.dask import PinPlugin

        plugin = PinPlugin()
        n_workers = len(client.scheduler_info()["workers"])
        client.register_plugin(plugin.nanny_plugin(restart=True))
        client.register_plugin(plugin)
        client.wait_for_workers(n_workers, timeout=60)


class _IdleRunner(Runner):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def map(self, func: Callable, args: Args) -> list:
        time.sleep(self.seconds)
        return []


class NoJob(Strategy):
    """No job at all: the window only lets the neighbour run (its rate when alone)."""

    name = "none"
    label = "no job (daemon alone)"
    summary = "runs nothing: measures the neighbour daemon's progress rate when it is alone"
    runs_job = False

    @contextlib.contextmanager
    def open(self, n_jobs: int) -> Iterator[Runner]:
        """Yield a runner whose map sleeps for one second instead of running tasks."""
        yield _IdleRunner(1.0)


for _strategy in (
    Sequential(),
    Inline(),
    HandPinnedPool(),
    JoblibStrategy(
        "loky",
        "loky",
        "joblib loky (default)",
        "joblib's default process pool; it caps BLAS to cpu_count // n_jobs in workers",
    ),
    JoblibStrategy(
        "multiprocessing",
        "multiprocessing",
        "joblib multiprocessing",
        "joblib's multiprocessing.Pool backend: BLAS threads not capped (the common naive case)",
    ),
    JoblibStrategy(
        "threading",
        "threading",
        "joblib threading",
        "joblib's thread pool in the calling process; BLAS not capped",
    ),
    DaskDefault(),
    DaskPinned(),
    JoblibStrategy(
        "pinned",
        "pinned",
        "pinned (pinbackend)",
        "pinbackend's joblib backend: loky workers on disjoint pinned cores, pools capped",
    ),
    JoblibStrategy(
        "pinned-threads",
        "pinned",
        "pinned threads",
        "pinbackend's pinned threads (prefer='threads'): one disjoint core share per thread "
        "of the calling process, BLAS/OpenMP capped per thread",
        prefer="threads",
    ),
    PinnedUnderRun(),
    NoJob(),
):
    register_strategy(_strategy)
