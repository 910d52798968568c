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

import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from .. import _platform
from .procstat import TreeSampler

PROTOCOL = "@pinbackend-bench"

# A process outside pinbackend's control that keeps one CPU busy.
_SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"

# The pseudo-daemon: pure-Python work units, counting them; every ~10 ms it writes the count
# and its own clock to a file, so its progress rate can be read at any moment.
_DAEMON = """\
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
count, last = 0, 0.0
while True:
    x = 0
    for i in range(2000):
        x += i
    count += 1
    now = time.monotonic()
    if now - last > 0.01:
        os.pwrite(fd, b"%20d %20.6f\\n" % (count, now), 0)
        last = now
"""


def emit(kind: str, data: object = None) -> None:
    """Send one protocol line to the benchmark."""
    sys.stdout.write(f"{PROTOCOL} {kind} {json.dumps(data)}\n")
    sys.stdout.flush()


class Neighbours:
    """The busy process or daemon a workload runs beside, started before its setup."""

    def __init__(self, kind: str | None, cpus: frozenset[int]):
        self.kind = kind
        self.cpu = max(cpus)
        self.processes: list[subprocess.Popen] = []
        self._progress: str | None = None
        self._marks: list[tuple[int, float]] = []

    def start(self) -> None:
        """Start the neighbour; a daemon is waited for until it holds its lease and runs."""
        if self.kind == "busy":
            self.processes.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(self.cpu)]))
        elif self.kind == "daemon":
            handle, self._progress = tempfile.mkstemp(prefix="pinbackend-bench-daemon-")
            os.close(handle)
            command = [sys.executable, "-m", "pinbackend", "run", "--cores", str(self.cpu)]
            command += ["--", sys.executable, "-c", _DAEMON, self._progress]
            self.processes.append(subprocess.Popen(command))
            deadline = time.monotonic() + 30
            # `run` takes the lease before it execs the daemon: once the daemon counts, the
            # lease is held and the job's plan will see it.
            while self._read()[0] == 0:
                if time.monotonic() > deadline or self.processes[0].poll() is not None:
                    raise RuntimeError("the pseudo-daemon did not start within 30 s")
                time.sleep(0.02)
        elif self.kind is not None:
            raise ValueError(f"unknown neighbour {self.kind!r}; expected 'busy' or 'daemon'")

    def _read(self) -> tuple[int, float]:
        try:
            with open(self._progress) as progress:
                count, clock = progress.read().split()
            return int(count), float(clock)
        except (OSError, ValueError):
            return 0, 0.0

    def roles(self) -> dict[int, str]:
        """Their pids, as ``neighbour`` (their CPU time is neither noise nor the job's)."""
        return {p.pid: "neighbour" for p in self.processes}

    def mark(self) -> None:
        """Note the daemon's progress now (window start and stop)."""
        if self._progress:
            self._marks.append(self._read())

    def rate(self) -> float | None:
        """The daemon's work units per second between the first and last mark."""
        if len(self._marks) < 2:
            return None
        (count0, clock0), (count1, clock1) = self._marks[0], self._marks[-1]
        return (count1 - count0) / (clock1 - clock0) if clock1 > clock0 else None

    def stop(self) -> None:
        """Kill them and clean up."""
        for process in self.processes:
            process.kill()
            process.wait()
        if self._progress:
            with contextlib.suppress(OSError):
                os.unlink(self._progress)


class MeasuredWindow:
    """The window a workload's ``measure`` opens and closes (see :mod:`.workloads`)."""

    def __init__(self, cpus: frozenset[int], neighbours: Neighbours):
        self.cpus = cpus
        self.neighbours = neighbours
        self.wall: float | None = None
        self.stats = None

    def start(self) -> None:
        """Tell the benchmark the timed part starts, then start clock and counters."""
        emit("ready")
        self.sampler = TreeSampler(self.cpus, roles=self.neighbours.roles())
        self.sampler.start()
        self.neighbours.mark()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        """Stop the clock first, then the counters."""
        self.wall = time.perf_counter() - self._t0
        self.neighbours.mark()
        self.stats = self.sampler.stop()


@contextlib.contextmanager
def _neighbours(kind: str | None, cpus: frozenset[int]) -> Iterator[Neighbours]:
    neighbours = Neighbours(kind, cpus)
    try:
        neighbours.start()
        yield neighbours
    finally:
        neighbours.stop()


def measure(spec: dict) -> dict:
    """Run the measurement ``spec`` describes; return its numbers."""
    for module in spec.get("plugins", ()):
        importlib.import_module(module)
    from .strategies import get_strategy
    from .workloads import get_workload

    strategy = get_strategy(spec["strategy"])
    workload = get_workload(spec["workload"])
    cpus = _platform.allowed_cpus()
    with _neighbours(workload.neighbour, cpus) as neighbours:
        window = MeasuredWindow(cpus, neighbours)
        extra = workload.measure(strategy, spec["n_jobs"], spec["params"], window)
    if window.wall is None:
        raise RuntimeError(f"workload {workload.name!r} never opened its measured window")
    result = {"time": window.wall, "extra": extra, "window": window.stats.to_dict()}
    rate = neighbours.rate()
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
