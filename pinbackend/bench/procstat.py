"""What the kernel counts for a process tree during a measurement (Linux ``/proc``).

Three things decide whether a timing can be trusted and why it is what it is:

* CPU time used **outside** the benchmark's process tree on the CPUs it runs on (other
  users' jobs, the hypervisor's steal): a noisy window is flagged, not silently kept;
* ``se.nr_migrations`` per thread (``/proc/<pid>/task/<tid>/sched``): how often the scheduler
  moved a thread to another CPU; pinned workers should show about none;
* involuntary context switches per thread (preemptions: the thread wanted to run on).

Processes can start and end inside a window (``multiprocessing`` pools created by each
``Parallel`` call), so :class:`TreeSampler` also samples the tree every ``interval`` seconds
and keeps each thread's last value. Elsewhere than Linux every reader returns nothing and
the benchmark reports the counters as unavailable.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from .. import _platform

__all__ = ["ProcessSample", "TreeSampler", "WindowStats", "cpu_ticks", "process_tree"]

_TICK = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def cpu_ticks(cpus: frozenset[int]) -> tuple[float, float] | None:
    """Busy and steal seconds summed over ``cpus`` since boot, from ``/proc/stat``.

    Busy is user + nice + system + irq + softirq (guest time is already inside user);
    steal is time the hypervisor gave to other machines while we wanted to run.
    """
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    busy = steal = 0.0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in rest.split()]
        user, nice, system, _idle, _iowait, irq, softirq = values[:7]
        busy += user + nice + system + irq + softirq
        steal += values[7] if len(values) > 7 else 0
    return busy * _TICK, steal * _TICK


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants.

    Follows ``/proc/<pid>/task/<tid>/children`` (a child is listed under the thread that
    created it), which costs a few reads per process; kernels without that file
    (CONFIG_PROC_CHILDREN off) get one scan of all of ``/proc`` instead.
    """
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        tree.append(pid)
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
            except FileNotFoundError:
                if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                    continue  # the thread ended meanwhile
                return _scan_tree(root)
            except OSError:
                continue
    return tree


def _scan_tree(root: int) -> list[int]:
    """:func:`process_tree` by one scan of ``/proc`` (parent pids from ``stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _own_and_children_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` itself, and of its children it has already reaped."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    own = (int(fields[11]) + int(fields[12])) * _TICK
    reaped = (int(fields[13]) + int(fields[14])) * _TICK
    return own, reaped


def _thread_counters(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread of ``pid``: (migrations, involuntary context switches) since it started."""
    counters = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return counters
    for tid in tids:
        migrations = involuntary = 0
        try:
            with open(f"/proc/{pid}/task/{tid}/sched") as sched:
                for line in sched:
                    key, _, value = line.partition(":")
                    key = key.strip()
                    if key == "se.nr_migrations":
                        migrations = int(value)
                    elif key == "nr_involuntary_switches":
                        involuntary = int(value)
        except (OSError, ValueError):
            continue
        counters[int(tid)] = (migrations, involuntary)
    return counters


@dataclass
class ProcessSample:
    """Counters of one process over a window: CPU seconds, migrations, preemptions."""

    pid: int
    role: str
    cpu: float = 0.0
    migrations: int = 0
    involuntary: int = 0
    threads: int = 0

    def to_dict(self) -> dict:
        """Plain-data form for the JSON report."""
        return {
            "pid": self.pid,
            "role": self.role,
            "cpu_s": round(self.cpu, 3),
            "migrations": self.migrations,
            "involuntary_switches": self.involuntary,
            "threads": self.threads,
        }


@dataclass
class WindowStats:
    """What happened on the measured CPUs during one window."""

    wall: float
    tree_cpu: float
    outside_cpu: float
    steal: float
    n_cpus: int
    processes: list[ProcessSample] = field(default_factory=list)
    available: bool = True

    @property
    def noise(self) -> float:
        """Share of the measured CPUs' capacity used by others (outside the tree, or stolen)."""
        if not self.available or self.wall <= 0:
            return 0.0
        return (self.outside_cpu + self.steal) / (self.wall * self.n_cpus)

    def totals(self, role: str) -> dict:
        """CPU seconds, migrations and preemptions summed over the processes of ``role``."""
        chosen = [p for p in self.processes if p.role == role]
        return {
            "processes": len(chosen),
            "cpu_s": round(sum(p.cpu for p in chosen), 3),
            "migrations": sum(p.migrations for p in chosen),
            "involuntary_switches": sum(p.involuntary for p in chosen),
        }

    def to_dict(self) -> dict:
        """Plain-data form for the JSON report."""
        return {
            "available": self.available,
            "tree_cpu_s": round(self.tree_cpu, 3),
            "outside_cpu_s": round(self.outside_cpu, 3),
            "steal_s": round(self.steal, 3),
            "noise": round(self.noise, 4),
            "main": self.totals("main"),
            "workers": self.totals("worker"),
            "neighbours": self.totals("neighbour"),
            "processes": [p.to_dict() for p in self.processes],
        }


class TreeSampler:
    """Follow the process tree rooted here during a window, then summarize it.

    The root is ``"main"`` (the caller, as in a user's program) and every descendant a
    ``"worker"``. ``neighbours`` are pids outside this tree that the benchmark started
    itself (a busy process, a daemon): their trees are followed too, as ``"neighbour"``,
    so that their CPU time counts neither as noise nor as the job's. The sampler's own
    thread is left out of the main process's numbers.
    """

    def __init__(
        self,
        cpus: frozenset[int],
        neighbours: list[int] | tuple[int, ...] = (),
        interval: float = 0.2,
    ):
        self.cpus = frozenset(cpus)
        self.neighbours = tuple(neighbours)
        self.roles: dict[int, str] = {}
        self.interval = interval
        self.root = os.getpid()
        self._first: dict[tuple[int, int], tuple[int, int]] = {}
        self._last: dict[tuple[int, int], tuple[int, int]] = {}
        # Per pid: (own CPU, CPU of its reaped children) at first and last sight.
        self._cpu_first: dict[int, tuple[float, float]] = {}
        self._cpu_last: dict[int, tuple[float, float]] = {}
        self._alive: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampler_tid: int | None = None
        self._sampler_cpu = 0.0

    def _role(self, pid: int) -> str:
        if pid == self.root:
            return "main"
        return self.roles.get(pid, "worker")

    def _sample(self, first: bool) -> None:
        tree = process_tree(self.root)
        for neighbour in self.neighbours:
            for pid in process_tree(neighbour):
                self.roles[pid] = "neighbour"
                tree.append(pid)
        self._alive = set(tree)
        for pid in tree:
            own, reaped = _own_and_children_cpu(pid)
            self._cpu_last[pid] = (own, reaped)
            if first:
                self._cpu_first[pid] = (own, reaped)
            else:
                self._cpu_first.setdefault(pid, (0.0, 0.0))  # born during the window
            for tid, values in _thread_counters(pid).items():
                if tid == self._sampler_tid:
                    continue
                key = (pid, tid)
                self._last[key] = values
                if first:
                    self._first[key] = values
                else:
                    self._first.setdefault(key, (0, 0))  # born during the window

    def _loop(self) -> None:
        self._sampler_tid = threading.get_native_id()
        start = time.thread_time()
        while not self._stop.wait(self.interval):
            self._sample(first=False)
        self._sampler_cpu = time.thread_time() - start

    def start(self) -> None:
        """Take the first sample and start sampling in the background."""
        self._busy0 = cpu_ticks(self.cpus) if _platform.IS_LINUX else None
        self._parent_cpu0 = _own_and_children_cpu(os.getppid())[0]
        self._sample(first=True)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="pinbackend-bench-sampler")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> WindowStats:
        """Take the last sample and return the window's numbers."""
        wall = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(first=False)
        busy1 = cpu_ticks(self.cpus) if _platform.IS_LINUX else None
        if self._busy0 is None or busy1 is None:
            return WindowStats(wall, 0.0, 0.0, 0.0, len(self.cpus), available=False)
        processes = []
        for pid, (own_last, _) in self._cpu_last.items():
            own_first = self._cpu_first[pid][0]
            sample = ProcessSample(pid, self._role(pid))
            # Own time only: a parent's reaped children are counted as themselves.
            sample.cpu = max(own_last - own_first, 0.0)
            for (owner, tid), last in self._last.items():
                if owner != pid:
                    continue
                first = self._first[(owner, tid)]
                sample.migrations += last[0] - first[0]
                sample.involuntary += last[1] - first[1]
                sample.threads += 1
            if pid == self.root:
                sample.cpu = max(sample.cpu - self._sampler_cpu, 0.0)
            processes.append(sample)
        # The tree's CPU in the window: each live process's own time since the window
        # started, plus what parents got from children reaped meanwhile (their whole life),
        # minus what those children had used before the window started.
        tree_cpu = 0.0
        for pid, (own_first, reaped_first) in self._cpu_first.items():
            own_last, reaped_last = self._cpu_last[pid]
            tree_cpu += (own_last if pid in self._alive else 0.0) - own_first
            tree_cpu += reaped_last - reaped_first
        # The benchmark's own orchestrator (our parent) waits in select(); count it as ours.
        tree_cpu += _own_and_children_cpu(os.getppid())[0] - self._parent_cpu0
        busy = busy1[0] - self._busy0[0]
        steal = busy1[1] - self._busy0[1]
        outside = max(busy - tree_cpu, 0.0)
        return WindowStats(wall, tree_cpu, outside, steal, len(self.cpus), processes)
