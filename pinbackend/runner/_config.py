"""The runner's settings: one small, picklable, validated value shared by every patch."""

from __future__ import annotations

from dataclasses import dataclass

from ..host.options import (
    COUNT,
    SOME_CPUS,
    SWITCH,
    PinOptions,
    check_job_cpus,
    declare,
    redeclare,
)

__all__ = ["RunnerConfig"]

_RUNNER = ("runner",)


@dataclass(frozen=True)
class RunnerConfig(PinOptions):
    """How the pools of one runner job are planned: the shared options, and the runner's own.

    ``processes`` overrides the size of every process pool started outside a pinned worker
    (``-p``); ``cores`` limits the job to those CPUs; ``threads`` caps the BLAS/OpenMP/TBB
    pools of the main process; ``pin_main`` pins the main process to the job's CPUs. They
    are declared as the shared options (:class:`~pinbackend.host.options.PinOptions`) are,
    and validated with them; the runner's policy defaults to ``"clamp"``.
    """

    oversubscribe: str | None = redeclare(PinOptions, "oversubscribe", "clamp")
    processes: int | None = declare(
        COUNT,
        None,
        "workers of every process pool the program starts (replaces its own sizes, like "
        "smp's and tbb's -p); fewer when fewer cores are free, with a note",
        flag="--processes",
        short="-p",
        where=_RUNNER,
        none_means="the program's own sizes",
    )
    cores: frozenset[int] | None = declare(
        SOME_CPUS,
        None,
        "run the job's pools on these CPUs only",
        flag="--cores",
        where=_RUNNER,
        none_means="all allowed CPUs",
    )
    threads: int | None = declare(
        COUNT,
        None,
        "cap the main process's BLAS/OpenMP/TBB thread pools at N (like tbb's -p); "
        "default: not capped",
        flag="--threads",
        short="-t",
        where=_RUNNER,
        none_means="not capped",
    )
    pin_main: bool = declare(
        SWITCH,
        False,
        "pin the main process to the job's free CPUs too",
        flag="--pin-main",
        where=_RUNNER,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.oversubscribe is None:
            object.__setattr__(self, "oversubscribe", "clamp")
        check_job_cpus(self.cores, self.reserve)

    def record(self) -> dict:
        """The runner's options that differ from their defaults, and the policy (always),
        for job records (CPU sets as lists like ``"0-3"``)."""
        options: dict[str, object] = {}
        for option in self.declared("runner"):
            value = getattr(self, option.name)
            if value != option.default:
                options[option.name] = value if _plain(value) else option.text(value)
        options["oversubscribe"] = self.oversubscribe
        return options


def _plain(value: object) -> bool:
    return isinstance(value, bool | int | float | str)
