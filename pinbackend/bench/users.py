"""The shared-machine workload: two users each run the same ``Parallel(n_jobs=-1)`` job at
the same instant (issue 20).

Each "user" is a program of its own with a registry of its own (``PINBACKEND_RUNTIME_DIR``),
as two Unix users without a host registry are: neither sees the other's leases, only, with
``other_pins="avoid"`` (the default), the other's pinned processes in /proc. Strategies:
``loky``; ``pinned-blind``, the pinned backend with ``other_pins="ignore"`` (pinbackend
before it looked at /proc: both users' workers pinned to the same CPUs); ``pinned``, with
the host view; ``pinned-host``, both claiming through a host registry made for the run
(``host init``, root only), where a newcomer asks for its fair share (issue 21). Reported:
each job's time (``extra["jobs"]``) and the makespan.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .moving import _end, _stamp, spin_task
from .report import cell_runs, robust_median
from .strategies import JoblibStrategy, Strategy, get_strategy, register_strategy
from .targets import register_targets
from .workloads import Workload, register_workload

__all__ = ["check_two_users", "measure_two_users", "user_main"]


class PinnedBlind(JoblibStrategy):
    """The pinned backend that plans with the registry's leases only (``other_pins="ignore"``)."""

    def __init__(self):
        super().__init__(
            "pinned-blind",
            "pinned",
            "pinned, blind to other users",
            "the pinned backend with other_pins='ignore': other users' pinned processes unseen",
        )

    @contextlib.contextmanager
    def joblib_config(self, n_jobs: int) -> Iterator[None]:
        """``parallel_config(backend="pinned", other_pins="ignore")``."""
        from joblib import parallel_config

        with parallel_config(backend="pinned", n_jobs=n_jobs, other_pins="ignore"):
            yield


class PinnedHost(JoblibStrategy):
    """The pinned backend, both programs claiming through one host registry."""

    host_registry = True

    def __init__(self):
        super().__init__(
            "pinned-host",
            "pinned",
            "pinned, host registry",
            "the pinned backend with a host registry (host init) shared by both users: "
            "fair share between them",
        )

    def unavailable(self) -> str | None:
        """Not root: ``host init`` cannot make the registry."""
        return None if os.geteuid() == 0 else "needs root to make a host registry (host init)"


@contextlib.contextmanager
def _host_registry(stack: contextlib.ExitStack, strategy: Strategy) -> Iterator[dict[str, str]]:
    """The environment both programs share: a host registry of their own for this run,
    where the strategy asks for one."""
    if not getattr(strategy, "host_registry", False):
        yield {}
        return
    from ..host.hostinit import init_host_registry
    from ..host.hostreg import HOST_REGISTRY_ENV

    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pb-host-")))
    yield {HOST_REGISTRY_ENV: str(init_host_registry(folder / "host").path)}


def user_main(argv: list[str] | None = None) -> int:
    """One user's program: ``STRATEGY TASKS ITERATIONS``; says ``ready``, waits for a line on
    stdin, runs its ``Parallel(n_jobs=-1)`` call and prints its start and end."""
    import warnings

    from joblib import Parallel, delayed

    name, tasks, iterations = argv or sys.argv[1:]
    strategy = get_strategy(name)
    warnings.simplefilter("ignore")  # waiting and sharing notes: the times tell
    print("ready 0", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    with strategy.joblib_config(-1):
        Parallel()(delayed(spin_task)(int(iterations)) for _ in range(int(tasks)))
    print("start", start, flush=True)
    print("end", time.monotonic(), flush=True)
    return 0


def measure_two_users(strategy: Strategy, n_jobs: int, params: Mapping[str, Any], window) -> dict:
    """Start both users' programs, tell both to go at once, wait for both."""
    code = "import sys\nfrom pinbackend.bench.users import user_main\nsys.exit(user_main())"
    args = [strategy.name, str(params["tasks"]), str(params["iterations"])]
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(_host_registry(stack, strategy))
        users = []
        for _ in range(2):
            registry = stack.enter_context(tempfile.TemporaryDirectory(prefix="pb-user-"))
            env = {**os.environ, **host, "PINBACKEND_RUNTIME_DIR": registry}
            process = subprocess.Popen(
                [sys.executable, "-c", code, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            stack.callback(_end, [process])
            users.append(process)
        for process in users:
            _stamp(process, "ready")
        window.start()
        for process in users:
            process.stdin.write("go\n")
            process.stdin.flush()
        spans = [(_stamp(p, "start"), _stamp(p, "end")) for p in users]
        window.stop()
    first, second = sorted(end - start for start, end in spans)
    makespan = max(end for _, end in spans) - min(start for start, _ in spans)
    return {"jobs": {"faster": first, "slower": second}, "makespan": makespan}


def _describe(params, n_jobs) -> str:
    return (
        f"two programs with registries of their own (two users; a host registry for "
        f"pinned-host only) each run "
        f"Parallel(n_jobs=-1) over {params['tasks']} tasks of {params['iterations']:,} "
        f"additions, started at once; time: makespan"
    )


def check_two_users(check) -> None:
    """Issue 20's target: pinned, with the host view, no slower than loky (makespan, paired
    round by round), with and without a host registry; pinned-blind is reported against the
    same bar."""
    for strategy in ("pinned", "pinned-host", "pinned-blind"):
        name = "two-users" if strategy == "pinned" else f"two-users-{strategy.split('-')[1]}"
        target = f"two-users: {strategy}: makespan no slower than loky's"
        if not check.comparable(name, target, "two-users", strategy, "loky"):
            continue
        loky = {r["round"]: r["time"] for r in _ok(check.doc, "loky")}
        ratios = [
            r["time"] / loky[r["round"]] for r in _ok(check.doc, strategy) if loky.get(r["round"])
        ]
        median = robust_median(ratios)
        if median is None:
            check.add(name, target, "n/a", "no round where both ran")
            continue
        each = ", ".join(f"{ratio:.2f}" for ratio in sorted(ratios))
        detail = f"median of {len(ratios)} paired ratios {strategy}/loky = {median:.2f} ({each})"
        status = ("pass" if median <= 1.0 else "fail") if strategy != "pinned-blind" else "info"
        check.add(name, target, status, detail, check.noisy("two-users", strategy, "loky"))


def _ok(doc: dict, strategy: str) -> list[dict]:
    return [r for r in cell_runs(doc, "two-users", strategy) if r["status"] == "ok"]


register_strategy(PinnedBlind())
register_strategy(PinnedHost())
register_targets(check_two_users, workloads=("two-users",))
register_workload(
    Workload(
        name="two-users",
        number="10",
        title="Two users run the same job at once",
        metric="time",
        strategies=("loky", "pinned-blind", "pinned", "pinned-host"),
        quick_strategies=("loky", "pinned-blind", "pinned", "pinned-host"),
        params={
            "quick": {"tasks": 8, "iterations": 1_800_000},
            "full": {"tasks": 8, "iterations": 11_000_000},
        },
        timeout={"quick": 40.0, "full": 90.0},
        measure=measure_two_users,
        describe=_describe,
        notes="each job's own time and the makespan (issue 20)",
    )
)
