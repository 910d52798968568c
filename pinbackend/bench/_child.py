"""One measurement in a fresh interpreter: ``python -m pinbackend.bench._child SPEC_JSON``.

A fresh process per measurement gives every strategy the same clean start (the thread
variables it needs are in its environment before numpy loads, no pool or OpenMP runtime
left over from another strategy) and lets the benchmark kill a measurement, with all its
workers, when it runs past its timeout.

It talks to the benchmark through lines on stdout that start with :data:`PROTOCOL`:
``ready`` when setup is done and the timed part starts (the timeout counts from there),
then ``result`` with the numbers. Anything else on stdout (a task's prints) is ignored.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

from .. import _platform
from .neighbours import Progress
from .procstat import TreeSampler

PROTOCOL = "@pinbackend-bench"


def emit(kind: str, data: object = None) -> None:
    """Send one protocol line to the benchmark."""
    sys.stdout.write(f"{PROTOCOL} {kind} {json.dumps(data)}\n")
    sys.stdout.flush()


class MeasuredWindow:
    """The window a workload's ``measure`` opens and closes (see :mod:`.workloads`).

    ``neighbour`` is what the benchmark says about the process it started beside this
    measurement (see :mod:`.neighbours`): its pid, and a daemon's progress file.
    """

    def __init__(self, cpus: frozenset[int], neighbour: dict | None):
        self.cpus = cpus
        self.neighbour_pids = [neighbour["pid"]] if neighbour else []
        path = neighbour.get("progress") if neighbour else None
        self.progress = Progress(path) if path else None
        self.wall: float | None = None
        self.stats = None

    def start(self) -> None:
        """Tell the benchmark the timed part starts, then start clock and counters."""
        emit("ready")
        self.sampler = TreeSampler(self.cpus, neighbours=self.neighbour_pids)
        self.sampler.start()
        if self.progress:
            self.progress.mark()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        """Stop the clock first, then the counters."""
        self.wall = time.perf_counter() - self._t0
        if self.progress:
            self.progress.mark()
        self.stats = self.sampler.stop()


def measure(spec: dict) -> dict:
    """Run the measurement ``spec`` describes; return its numbers."""
    for module in spec.get("plugins", ()):
        importlib.import_module(module)
    from .strategies import get_strategy
    from .workloads import get_workload

    strategy = get_strategy(spec["strategy"])
    workload = get_workload(spec["workload"])
    # The benchmark's CPUs, not ours: a launcher may have pinned this process to fewer.
    cpus = frozenset(spec.get("cpus") or _platform.allowed_cpus())
    window = MeasuredWindow(cpus, spec.get("neighbour"))
    extra = workload.measure(strategy, spec["n_jobs"], spec["params"], window)
    if window.wall is None:
        raise RuntimeError(f"workload {workload.name!r} never opened its measured window")
    result = {"time": window.wall, "extra": extra, "window": window.stats.to_dict()}
    rate = window.progress.rate() if window.progress else None
    if rate is not None:
        result["extra"]["daemon_rate"] = rate
    return result


def main(argv: list[str]) -> int:
    """Entry point: one JSON argument, the measurement spec."""
    spec = json.loads(argv[0])
    emit("result", measure(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
