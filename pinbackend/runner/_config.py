"""The runner's settings: one small, picklable, validated value shared by every patch."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.cpuset import format_cpu_list
from ..host.pool import DEFAULT_CLAIM_TIMEOUT

__all__ = ["RUNNER_POLICIES", "RunnerConfig"]

#: What a pool does when it asks for more workers than there are free cores:
#: ``"clamp"`` runs as many as fit (a note says so) and fails only when no core is free;
#: ``"error"`` fails; ``"share"`` lets workers share cores (with other jobs' too), warning;
#: ``"wait"`` waits until other jobs free enough cores.
RUNNER_POLICIES = ("clamp", "error", "share", "wait")


def _check_count(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None; got {value!r}")


def _check_cpus(name: str, cpus: frozenset[int] | None) -> None:
    if cpus is None:
        return
    if not isinstance(cpus, frozenset) or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus
    ):
        raise ValueError(f"{name} must be a frozenset of CPU numbers (ints >= 0); got {cpus!r}")


@dataclass(frozen=True)
class RunnerConfig:
    """How the pools of one runner job are planned.

    ``processes`` overrides the size of every process pool started outside a pinned worker
    (``-p``); ``cores_per_worker`` fixes each worker's physical cores; ``cores`` limits the
    job to those CPUs and ``reserve`` keeps CPUs free; ``threads`` caps the BLAS/OpenMP/TBB
    pools of the main process; ``oversubscribe`` is one of :data:`RUNNER_POLICIES`;
    ``pin_main`` pins the main process to the job's CPUs; ``claim_timeout`` is how long a
    new worker waits for a free slot.
    """

    processes: int | None = None
    cores_per_worker: int | None = None
    cores: frozenset[int] | None = None
    reserve: frozenset[int] = frozenset()
    threads: int | None = None
    oversubscribe: str = "clamp"
    pin_main: bool = False
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT

    def __post_init__(self) -> None:
        _check_count("processes", self.processes)
        _check_count("cores_per_worker", self.cores_per_worker)
        _check_count("threads", self.threads)
        _check_cpus("cores", self.cores)
        _check_cpus("reserve", self.reserve)
        if self.cores is not None and not self.cores:
            raise ValueError("cores must name at least one CPU, or be None for all allowed CPUs")
        if self.cores is not None and self.cores <= self.reserve:
            raise ValueError(
                f"every CPU of cores ({format_cpu_list(self.cores)}) is reserved "
                f"({format_cpu_list(self.reserve)}); reserve fewer CPUs or name more cores"
            )
        if self.oversubscribe not in RUNNER_POLICIES:
            raise ValueError(
                f"oversubscribe must be one of {', '.join(RUNNER_POLICIES)}; "
                f"got {self.oversubscribe!r}"
            )
        if not isinstance(self.claim_timeout, (int, float)) or self.claim_timeout < 0:
            raise ValueError(
                f"claim_timeout must be a number of seconds >= 0; got {self.claim_timeout!r}"
            )

    @property
    def joblib_policy(self) -> str:
        """The closest policy the joblib backend knows (it cannot wait for cores)."""
        return "clamp" if self.oversubscribe == "wait" else self.oversubscribe

    def describe(self) -> dict:
        """The options that differ from the defaults, for job records and dry runs."""
        options: dict[str, object] = {}
        if self.processes is not None:
            options["processes"] = self.processes
        if self.cores_per_worker is not None:
            options["cores_per_worker"] = self.cores_per_worker
        if self.cores is not None:
            options["cores"] = format_cpu_list(self.cores)
        if self.reserve:
            options["reserve"] = format_cpu_list(self.reserve)
        if self.threads is not None:
            options["threads"] = self.threads
        options["oversubscribe"] = self.oversubscribe
        if self.pin_main:
            options["pin_main"] = True
        return options
