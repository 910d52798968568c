"""The processes a workload runs beside: a busy process, or a pseudo-daemon holding a lease.

The benchmark starts the neighbour *before* the measurement, as on a real machine where the
daemon was there first, and outside the measurement's process (a measurement started under
a launcher such as ``pinbackend run`` is pinned, and a neighbour it started would inherit
its CPU mask and lease scope). The measurement learns the neighbour's pid, to count its CPU
time as the benchmark's own rather than noise, and the file where a daemon counts its
progress (:class:`Progress`), to report the daemon's rate during the timed window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

__all__ = ["KINDS", "Neighbour", "Progress"]

#: ``busy``: a process outside pinbackend's control spinning on one CPU; ``daemon``: a
#: pseudo-daemon holding a pinbackend lease on one CPU (``pinbackend run --cores N``).
KINDS = ("busy", "daemon")

# Pins itself to one CPU and spins, unknown to pinbackend.
_SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"

# Pure-Python work units, counted; every ~10 ms the count and the daemon's clock go to a
# file, so that its progress rate can be read at any moment from outside.
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


class Progress:
    """Reads a daemon's progress file: (work units, its clock) at any moment."""

    def __init__(self, path: str):
        self.path = path
        self.marks: list[tuple[int, float]] = []

    def read(self) -> tuple[int, float]:
        """The last (count, clock) the daemon wrote; (0, 0.0) before its first write."""
        try:
            with open(self.path) as progress:
                count, clock = progress.read().split()
            return int(count), float(clock)
        except (OSError, ValueError):
            return 0, 0.0

    def mark(self) -> None:
        """Note the progress now (window start and stop)."""
        self.marks.append(self.read())

    def rate(self) -> float | None:
        """Work units per second between the first and the last mark."""
        if len(self.marks) < 2:
            return None
        (count0, clock0), (count1, clock1) = self.marks[0], self.marks[-1]
        return (count1 - count0) / (clock1 - clock0) if clock1 > clock0 else None


class Neighbour:
    """One neighbour process, pinned to ``cpu``; a context manager that ends it."""

    def __init__(self, kind: str, cpu: int, env: Mapping[str, str]):
        if kind not in KINDS:
            raise ValueError(f"unknown neighbour {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind, self.cpu = kind, cpu
        self.progress: str | None = None
        if kind == "busy":
            command = [sys.executable, "-c", _SPIN, str(cpu)]
        else:
            handle, self.progress = tempfile.mkstemp(prefix="pinbackend-bench-daemon-")
            os.close(handle)
            command = [sys.executable, "-m", "pinbackend", "run", "--cores", str(cpu), "--"]
            command += [sys.executable, "-c", _DAEMON, self.progress]
        # Its own session: the benchmark ends it (and anything it started) by group.
        self.process = subprocess.Popen(
            command, env=dict(env), start_new_session=True, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        if self.progress is None:
            return
        # `run` takes the lease before it execs the daemon: once the daemon counts, the
        # lease is held, and the job's plan will see it.
        deadline = time.monotonic() + 30
        while Progress(self.progress).read()[0] == 0:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the pseudo-daemon exited with status {self.process.returncode} before "
                    f"it started counting (could it lease CPU {self.cpu}?)"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("the pseudo-daemon did not start counting within 30 s")
            time.sleep(0.02)

    def to_spec(self) -> dict:
        """What the measurement needs to know about it."""
        return {"kind": self.kind, "pid": self.process.pid, "progress": self.progress}

    def stop(self) -> None:
        """Kill it and its group, and remove its progress file."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.progress:
            with contextlib.suppress(OSError):
                os.unlink(self.progress)

    def __enter__(self) -> Neighbour:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
