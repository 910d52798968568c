"""pinbackend's front doors as the behaviour tests drive them, and a neighbour job.

Each front door runs ``tests/scripts/front_door.py`` for real: a child program whose workers
(processes or threads) report from inside a task what they run on (:class:`Claimant`); a
:class:`Neighbour` is another job that leases cores through the registry, as any job does.
Sizes come from this machine's own allowed physical cores (:data:`CORES`).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from _helpers import PYTHON, abort_child, child_env

from pinbackend.core.cpuset import format_cpu_list
from pinbackend.host.machine import read_topology

SCRIPT = str(Path(__file__).parent / "scripts" / "front_door.py")
TESTS = str(Path(__file__).parent)

#: This machine's allowed physical cores (each the set of its SMT sibling CPUs), in order.
CORES = read_topology().restrict(read_topology().allowed).cores
ALLOWED = frozenset().union(*CORES)

#: Every front door: joblib's process pools and pinned threads, the runner's pools (a
#: multiprocessing Pool, a ProcessPoolExecutor, a ThreadPool), ``run -n`` and ``run --cores``,
#: and a Dask LocalCluster pinned by the plugin or by the worker preload.
JOBLIB = ("joblib", "joblib-threads")
RUNNER = ("runner-pool", "runner-executor", "runner-threadpool")
RUN = ("run-n", "run-cores")
DASK = ("dask-plugin", "dask-preload")
FRONT_DOORS = (*JOBLIB, *RUNNER, *RUN, *DASK)
#: Front doors whose workers are threads of the caller (the others' are processes).
THREADS = ("joblib-threads", "runner-threadpool")
#: Front doors that start a pool: it runs fewer workers than asked where fewer fit.
POOLS = (*JOBLIB, *RUNNER)
#: Pools of worker processes, which claim their slots themselves.
PROCESS_POOLS = ("joblib", "runner-pool", "runner-executor")

#: Seconds a child may take (start, run, end) on a busy 2-core machine, waits included.
CHILD_SECONDS = 90


def cpus_of(cores) -> frozenset[int]:
    """The CPUs of some of :data:`CORES`."""
    return frozenset().union(*cores)


def command(door: str, workers: int, *, policy=None, claim_timeout=None, extra=()) -> list[str]:
    """The command line of ``door`` asking for ``workers`` workers (``run``: that many
    cores, ``run --cores``: the CPUs of the first ``workers`` cores); ``extra``: the
    program's own flags (see ``tests/scripts/front_door.py``)."""
    runner_flags = []
    if policy is not None:
        runner_flags += ["--oversubscribe", policy]
    if claim_timeout is not None:
        runner_flags += ["--claim-timeout", f"{claim_timeout:g}"]
    if door in RUN:
        which = ["-n", str(workers)]
        if door == "run-cores":
            which = ["--cores", format_cpu_list(cpus_of(CORES[:workers]))]
        return [
            *(PYTHON, "-m", "pinbackend", "run", *which, *runner_flags),
            *("--", PYTHON, SCRIPT, "report", *extra),
        ]
    if door in RUNNER:
        kind = door.removeprefix("runner-")
        return [PYTHON, "-m", "pinbackend", *runner_flags, SCRIPT, kind, str(workers), *extra]
    options = []
    if policy is not None:
        options += ["--policy", policy]
    if claim_timeout is not None:
        options += ["--claim-timeout", f"{claim_timeout:g}"]
    return [PYTHON, SCRIPT, door, str(workers), *options, *extra]


class Claimant:
    """A front door's program, running: its events (``ready``, ``warning``, ``result``) as
    they come, its stderr kept. Close it (or use it as a context manager)."""

    def __init__(self, door: str, workers: int, **options):
        self.door = door
        self.args = command(door, workers, **options)
        self.started = time.time()
        # The program, and a LocalCluster's workers, import the tests' _dask_probes.
        env = child_env({"PYTHONPATH": TESTS})
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: queue.Queue = queue.Queue()
        self.warnings: list[str] = []
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the program's own output
            if "warning" in event:
                self.warnings.append(event["warning"])
            self.events.put(event)
        self.events.put({"exited": True})

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def next(self, key: str, timeout: float = CHILD_SECONDS) -> dict | None:
        """The next event that has ``key`` (None when the program ended first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise abort_child(self.process, timeout) from None
            if key in event:
                return event
            if "exited" in event:
                self.events.put(event)
                return None

    def ready(self) -> float:
        """When the program was about to call (``run``: when it started: it claims first)."""
        if self.door in RUN:
            return self.started
        event = self.next("ready")
        assert event is not None, self.stderr[-3000:]
        return event["ready"]

    def result(self, timeout: float = CHILD_SECONDS) -> dict:
        """The next call's outcome (``run``: the command's, or ``run``'s own refusal)."""
        event = self.next("result", timeout)
        if event is not None:
            return event["result"]
        self.process.wait(timeout)
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return {
            "workers": [],
            "error": lines[-1] if lines else f"exit status {self.process.returncode}",
            "seconds": time.time() - self.started,
        }

    def again(self) -> None:
        """Ask for the call once more (``--again``)."""
        self.process.stdin.write("again\n")
        self.process.stdin.flush()

    def close(self, timeout: float = CHILD_SECONDS) -> None:
        """Close stdin and wait for the program to end (stopped with its stacks if it hangs)."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise abort_child(self.process, timeout) from None
        for reader in self._readers:
            reader.join(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()

    def __enter__(self) -> Claimant:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def run_door(door: str, workers: int, **options) -> tuple[dict, Claimant]:
    """Run ``door`` once to its end; its result and the ended :class:`Claimant`."""
    with Claimant(door, workers, **options) as claimant:
        result = claimant.result()
    return result, claimant


HOLD = """
import sys
from pinbackend.host.leases import claim
lease = claim(set(map(int, sys.argv[1].split(","))), command=sys.argv[2])
print("held", flush=True)
sys.stdin.read()
"""


class Neighbour:
    """Another job on this host holding ``cpus`` (a lease, as any job takes) until released."""

    command = "the neighbour job"

    def __init__(self, cpus):
        self.cpus = frozenset(cpus)
        self.process = subprocess.Popen(
            [PYTHON, "-c", HOLD, ",".join(map(str, sorted(self.cpus))), self.command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        line = self.process.stdout.readline()
        assert line == "held\n", line
        self.pid = self.process.pid
        self.released: float | None = None

    def release(self) -> float:
        """End the neighbour; the time just before its lease began to go."""
        if self.released is None:
            self.released = time.time()
            self.process.stdin.close()
            self.process.wait(30)
            self.process.stdout.close()
        return self.released

    def __enter__(self) -> Neighbour:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def by_worker(door: str, reports: list[dict]) -> dict[int, list[dict]]:
    """Each worker's reports: a thread's (by thread id) or a process's (by pid)."""
    key = "tid" if door in THREADS else "pid"
    workers: dict[int, list[dict]] = {}
    for report in reports:
        workers.setdefault(report[key], []).append(report)
    return workers


def assert_pinned(door: str, reports: list[dict], count: int, *, shared: bool = False):
    """``count`` workers, each on a slot of whole cores of this machine, read from inside:
    every task of a worker on its slot; for a worker process every thread too, and
    ``os.cpu_count()`` and the slot variable set to it (a ``run`` command is a new program:
    its mask and caps only); BLAS capped to the slot (threads of one pool that take turns on
    a slot split its cap); slots disjoint unless ``shared``. Returns the slots."""
    workers = by_worker(door, reports)
    assert len(workers) == count, (door, sorted(workers), reports)
    taking_turns = Counter(
        frozenset(seen[0]["mask"]) for seen in workers.values() if door in THREADS
    )
    slots = []
    for seen in workers.values():
        (slot,) = {frozenset(report["mask"]) for report in seen}
        assert slot <= ALLOWED and all(core <= slot for core in CORES if core & slot), slot
        cap = max(1, len(slot) // taking_turns.get(slot, 1))
        for report in seen:
            assert report["blas"] == cap, (door, report)
            if door not in THREADS:
                assert report["masks"] == [sorted(slot)], (door, report)
            if door not in THREADS and door not in RUN:
                assert report["cpu_count"] == len(slot) and report["slot_env"], (door, report)
        slots.append(slot)
    if not shared:
        assert sum(map(len, slots)) == len(frozenset().union(*slots)), f"slots overlap: {slots}"
    return slots


def dask_lines(claimant: Claimant, level: str) -> list[str]:
    """pinbackend's log lines of ``level`` in a Dask program's output (its workers')."""
    return [line for line in claimant.stderr.splitlines() if f"pinbackend - {level}" in line]


def python_warnings(claimant: Claimant, category: str) -> list[str]:
    """The warnings of ``category`` the program showed, as ``Category: message``."""
    return [w for w in claimant.warnings if w.startswith(f"{category}: ")]


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
