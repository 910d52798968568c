"""The runner's settings: one small, picklable, validated value shared by every patch."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.cpuset import format_cpu_list
from ..host.options import (
    DEFAULT_CLAIM_TIMEOUT,
    OptionsError,
    PinOptions,
    check_count,
    check_cpus,
)

__all__ = ["RunnerConfig"]


@dataclass(frozen=True)
class RunnerConfig(PinOptions):
    """How the pools of one runner job are planned: the shared options, and the runner's own.

    ``processes`` overrides the size of every process pool started outside a pinned worker
    (``-p``); ``cores`` limits the job to those CPUs; ``threads`` caps the BLAS/OpenMP/TBB
    pools of the main process; ``pin_main`` pins the main process to the job's CPUs. The
    shared options (:class:`~pinbackend.host.options.PinOptions`) are validated there; the
    runner's policy defaults to ``"clamp"``.
    """

    oversubscribe: str | None = "clamp"
    processes: int | None = None
    cores: frozenset[int] | None = None
    threads: int | None = None
    pin_main: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.oversubscribe is None:
            object.__setattr__(self, "oversubscribe", "clamp")
        check_count("processes", self.processes, none_means="the program's own sizes")
        check_count("threads", self.threads, none_means="not capped")
        if self.cores is not None:
            object.__setattr__(self, "cores", check_cpus("cores", self.cores))
            if not self.cores:
                raise OptionsError(
                    "cores must name at least one CPU, or be None for all allowed CPUs"
                )
            if self.cores <= self.reserve:
                raise OptionsError(
                    f"every CPU of cores ({format_cpu_list(self.cores)}) is reserved "
                    f"({format_cpu_list(self.reserve)}); reserve fewer CPUs or name more cores"
                )

    def record(self) -> dict:
        """The options that differ from the defaults, for job records."""
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
        if self.claim_timeout != DEFAULT_CLAIM_TIMEOUT:
            options["claim_timeout"] = self.claim_timeout
        if self.pin_main:
            options["pin_main"] = True
        return options
