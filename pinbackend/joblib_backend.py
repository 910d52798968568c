"""joblib backend ``"pinned"``: loky's process pool with a disjoint, capped core set per worker.

Everything loky gives joblib is kept (crash recovery, cloudpickle, memory-mapping of large
arrays, generators, timeouts, abort on error); this backend only plans the slots in the
parent and makes every new worker claim one and apply it before it runs any task.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
from collections.abc import Iterable

from joblib._parallel_backends import FallbackToBackend, LokyBackend, SequentialBackend
from joblib.executor import get_memmapping_executor

from . import _platform
from .core.cpuset import CpuListError, format_cpu_list, parse_cpu_list
from .core.planner import OVERSUBSCRIBE_POLICIES
from .host.pool import DEFAULT_CLAIM_TIMEOUT, PoolPlan, free_cpus, join_pool, plan_pool
from .host.slot import in_slot

__all__ = ["PinnedBackend", "shutdown_workers"]


def _start_worker(pool: PoolPlan) -> None:
    """loky initializer: claim a slot of ``pool``, pin every thread and cap every pool."""
    join_pool(pool)


class PinnedBackend(LokyBackend):
    """Process pool where each worker owns a disjoint core set and caps its threads to it.

    Options (through ``parallel_config``/``parallel_backend`` keyword arguments):
    ``cores_per_worker`` (physical cores per worker; default: share all free cores),
    ``reserve`` (CPUs never used, a list or a string like ``"0,8-9"``), ``oversubscribe``
    (what to do with more workers than free cores: ``"error"``, ``"clamp"`` to run as many as
    fit, or ``"share"`` core sets with a warning; the default is ``"error"`` in your program
    and ``"clamp"`` inside pinned workers, so nested calls never exceed their worker's cores),
    ``claim_timeout`` (seconds a new worker waits for a free slot).
    """

    #: ``parallel_config(backend="pinned")`` without ``n_jobs`` uses every free core.
    default_n_jobs = -1
    supports_inner_max_num_threads = True
    supports_retrieve_callback = True

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        cores_per_worker: int | None = None,
        reserve: Iterable[int] | str = (),
        oversubscribe: str | None = None,
        claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
        **backend_kwargs,
    ):
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        self._set_options(
            cores_per_worker=cores_per_worker,
            reserve=reserve,
            oversubscribe=oversubscribe,
            claim_timeout=claim_timeout,
        )

    def _set_options(self, **options) -> None:
        """Validate and set the options named (see the class docstring); others are kept."""
        for name, value in options.items():
            setattr(self, name, _OPTION_CHECKS[name](value))

    @property
    def inner_max_num_threads(self) -> int | None:
        """Cap on each worker's threads; never above its slot size (checked when set)."""
        return self._inner_max_num_threads

    @inner_max_num_threads.setter
    def inner_max_num_threads(self, value: int | None) -> None:
        # parallel_config sets this attribute after construction: validate here.
        self._inner_max_num_threads = _check_count("inner_max_num_threads", value)

    @property
    def policy(self) -> str:
        """The oversubscription policy in force here (see the class docstring)."""
        if self.oversubscribe is not None:
            return self.oversubscribe
        return "clamp" if in_slot() else "error"

    def effective_n_jobs(self, n_jobs):
        """Workers for ``n_jobs``: negative values count back from the free physical cores."""
        return self._sizing(n_jobs)[1]

    def _sizing(self, n_jobs) -> tuple[int, int]:
        """(worker processes to start, ``n_jobs`` to report to joblib) for ``n_jobs``."""
        if n_jobs == 0:
            # joblib's own wording first: its test suite (test_invalid_njobs) matches on it.
            raise ValueError(
                f"n_jobs == 0 in Parallel has no meaning; got n_jobs={n_jobs!r}. Use a "
                "positive int (that many workers), -1 (all free cores), -2 (all free cores "
                "but one, and so on) or None (the enclosing parallel_config's n_jobs, else -1)"
            )
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 1 or mp.current_process().daemon:
            return 1, 1  # inline, as joblib does (and daemons cannot have children)
        if not (self.in_main_thread() or self.nesting_level == 0):
            return 1, 1  # no fork below threads (as loky decides)
        if n_jobs > 0 and self.policy != "clamp":
            return n_jobs, n_jobs  # too many for the cores: configure() applies the policy
        topology, usable = free_cpus(self.reserve)
        capacity = topology.count_cores(usable)
        capacity //= self.cores_per_worker or 1
        workers = max(min(n_jobs, capacity), 1) if n_jobs > 0 else max(capacity + 1 + n_jobs, 1)
        if workers == 1 and not _platform.allowed_cpus() <= usable:
            # joblib runs a single job inline in the caller, and the caller may run on CPUs
            # that are reserved or that other jobs hold: keep one pinned worker instead, and
            # tell joblib 2 so that it does not take its inline path.
            return 1, 2
        return workers, workers

    def configure(
        self,
        n_jobs=1,
        parallel=None,
        prefer=None,
        require=None,
        idle_worker_timeout=None,
        **executor_kwargs,
    ):
        """Plan the pool's slots and start (or reuse) loky workers that claim them.

        ``n_jobs=1`` runs inline in the caller, as with every joblib backend (joblib itself
        runs one job sequentially); the caller is never pinned. When ``n_jobs=-1`` (or a
        clamped count) leaves a single worker while the caller may run on reserved or busy
        CPUs, that worker still runs in its own pinned process.
        """
        # Parallel(backend="pinned", reserve=...) passes our options here, not to __init__.
        options = {
            name: executor_kwargs.pop(name) for name in _OPTION_CHECKS if name in executor_kwargs
        }
        self._set_options(**options)
        if "inner_max_num_threads" in executor_kwargs:
            # joblib hands it on to loky's executor, which ignores it: apply it ourselves.
            self.inner_max_num_threads = executor_kwargs.pop("inner_max_num_threads")
        workers, n_jobs = self._sizing(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        executor_kwargs = {**self.backend_kwargs, **executor_kwargs}
        if "timeout" in executor_kwargs:
            raise ValueError(
                "the 'timeout' parameter is not supported by the pinned backend (as with "
                "loky); use idle_worker_timeout for idle workers, or Parallel(timeout=...)"
            )
        idle = executor_kwargs.pop("idle_worker_timeout", 300)
        if idle_worker_timeout is not None:
            idle = idle_worker_timeout
        self._pool = plan_pool(
            workers,
            cores_per_worker=self.cores_per_worker,
            reserve=self.reserve,
            oversubscribe=self.policy,
            threads=self.inner_max_num_threads,
            claim_timeout=self.claim_timeout,
        )
        self._workers = get_memmapping_executor(
            workers,
            timeout=idle,
            env=self._pool.worker_env(),
            context_id=parallel._id,
            initializer=_start_worker,
            initargs=(self._pool,),
            **executor_kwargs,
        )
        self.parallel = parallel
        return n_jobs

    def get_nested_backend(self):
        """Nested calls subdivide the worker's own slot (workers import pinbackend)."""
        nested = PinnedBackend(
            nesting_level=(self.nesting_level or 0) + 1,
            inner_max_num_threads=self.inner_max_num_threads,
            oversubscribe=self.oversubscribe,
            claim_timeout=self.claim_timeout,
        )
        return nested, None

    def __repr__(self) -> str:
        options = [f"oversubscribe={self.policy!r}"]
        if self.cores_per_worker:
            options.append(f"cores_per_worker={self.cores_per_worker}")
        if self.reserve:
            options.append(f"reserve={format_cpu_list(self.reserve)!r}")
        return f"PinnedBackend({', '.join(options)})"


def _check_count(name: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
    return value


def _check_policy(oversubscribe):
    if oversubscribe is not None and oversubscribe not in OVERSUBSCRIBE_POLICIES:
        raise ValueError(
            f"oversubscribe must be one of {', '.join(OVERSUBSCRIBE_POLICIES)}; "
            f"got {oversubscribe!r}"
        )
    return oversubscribe


def _check_claim_timeout(claim_timeout) -> float:
    if not isinstance(claim_timeout, (int, float)) or claim_timeout < 0:
        raise ValueError(f"claim_timeout must be a number of seconds >= 0; got {claim_timeout!r}")
    return float(claim_timeout)


def _check_reserve(reserve) -> frozenset[int]:
    try:
        cpus = parse_cpu_list(reserve) if isinstance(reserve, str) else frozenset(reserve)
    except (CpuListError, TypeError) as error:
        raise ValueError(
            f"reserve must be CPU numbers or a CPU list like '0,8-9'; got {reserve!r} ({error})"
        ) from None
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
        raise ValueError(f"reserve must hold non-negative CPU numbers; got {sorted(cpus, key=str)}")
    return cpus


_OPTION_CHECKS = {
    "cores_per_worker": functools.partial(_check_count, "cores_per_worker"),
    "reserve": _check_reserve,
    "oversubscribe": _check_policy,
    "claim_timeout": _check_claim_timeout,
}


def shutdown_workers() -> None:
    """Stop joblib's reusable worker processes now, releasing their core leases."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
