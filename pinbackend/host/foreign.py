"""Processes pinned to part of this job's CPUs that hold no lease here: other users' jobs,
``taskset``, ``numactl``, Slurm, containers' cpusets, other registries' pinbackend jobs.

Any user may read any process's (and thread's) CPU affinity and scheduler line in /proc
without privileges: that is a view of the other users of the host that needs no shared
registry. A thread whose affinity covers all of the job's CPUs can run anywhere the job can
and is no signal; one whose affinity is *narrower* (it covers part of the job's CPUs) was
pinned there, and while its process runs it uses those CPUs. Such CPUs are held like other
jobs' leases (:class:`~pinbackend.host.view.HostView` counts them among ``others``), with
three exceptions:

- kernel threads (pinned to their CPU by design);
- this process, its ancestors, the holders of the registry's leases and their descendants
  (their CPUs are counted by their leases, with the meaning leases carry: own workers,
  shared slots, a Dask cluster's group);
- idle processes: a pinned thread counts while it runs or waits for a CPU (state ``R``), or
  used CPU time since the last look (within :data:`SAMPLE_SECONDS`), or in a second look
  :data:`SECOND_LOOK_SECONDS` later when there was no recent one. A ``taskset`` shell that
  sleeps holds no core; it shares one when it wakes.

Cost, measured on this 2-CPU machine with 2,175 processes and 2,916 threads: 14-16 ms per
survey reading every thread (2.5-5 ms reading only main threads); 0.5 ms with 75 processes.
Every thread is read because OpenMP (``OMP_PROC_BIND``) and pinned thread pools pin threads,
not processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .. import _platform
from .holders import LeaseInfo
from .state import STATE

__all__ = [
    "SAMPLE_SECONDS",
    "SECOND_LOOK_SECONDS",
    "pinned_cpus",
    "pinned_first",
    "pinned_holders",
]

#: How long a thread's CPU-time reading tells whether it ran since (older ones are dropped).
SAMPLE_SECONDS = 5.0
#: Without a recent reading, how long to wait before a second look at idle-looking threads.
SECOND_LOOK_SECONDS = 0.03


@dataclass(frozen=True)
class _Pinned:
    pid: int
    tasks: dict[int, frozenset[int]]  # thread id -> its CPUs within the job's


def pinned_holders(
    allowed: frozenset[int], *, leases: Iterable[LeaseInfo] = (), me: int | None = None
) -> tuple[LeaseInfo, ...]:
    """The processes that run pinned to part of ``allowed``, as holders
    (``LeaseInfo(source="affinity")``: pid, uid, command, since, their busy threads' CPUs).

    ``leases``: the registry's leases (their holders and descendants are skipped); ``me`` (default:
    this process) and its ancestors are skipped, not its children (a program that starts a
    pinned helper and then a pool must plan around the helper). Empty where the OS cannot
    list processes.
    """
    me = os.getpid() if me is None else me
    ancestors = set(_ancestry(me))
    skip = {info.pid for info in leases if info.pid is not None}
    skipped = skip | {me}
    found = [
        pinned
        for pid in _platform.process_ids()
        if pid not in skipped and pid not in ancestors
        for pinned in [_narrow_tasks(pid, allowed)]
        if pinned is not None
    ]
    holders = skip - {me}  # this process's own children are like anyone's
    found = [pinned for pinned in found if not _descends_from(pinned.pid, holders)]
    busy = _busy_cpus(found)
    return tuple(
        _holder(pinned.pid, cpus) for pinned, cpus in zip(found, busy, strict=True) if cpus
    )


def pinned_cpus(allowed: frozenset[int], *, leases: Iterable[LeaseInfo] = ()) -> frozenset[int]:
    """The CPUs of ``allowed`` that busy processes holding none of ``leases`` are pinned to."""
    return frozenset().union(*(info.cores for info in pinned_holders(allowed, leases=leases)))


def pinned_first(
    cores: frozenset[int],
    job_cpus: frozenset[int],
    *,
    leases: Iterable[LeaseInfo] = (),
    me: int | None = None,
) -> tuple[LeaseInfo, ...]:
    """Right after pinning to ``cores``: the busy processes pinned to part of them (narrower
    than ``job_cpus``) that started before ``me`` (default: this process).

    Two jobs that read the host at the same instant both find it free; each looks again
    after pinning, so the later one to pin sees the earlier one, and the younger of the two
    gives way: start time, then pid, which both sides order the same way.
    """
    me = os.getpid() if me is None else me
    mine = _started(me)
    return tuple(
        info
        for info in pinned_holders(job_cpus, leases=leases, me=me)
        if info.cores & cores and _started(info.pid) < mine
    )


def _started(pid: int) -> tuple[float, int]:
    stat = _platform.read_task_stat(pid)
    return (float("inf") if stat is None else stat.started, pid)


def _narrow_tasks(pid: int, allowed: frozenset[int]) -> _Pinned | None:
    tasks = {}
    try:
        affinities = _platform.thread_affinities(pid)
    except OSError:
        return None  # gone, or /proc/PID/task unreadable
    for tid, cpus in affinities.items():
        within = cpus & allowed
        if within and not allowed <= cpus:
            tasks[tid] = frozenset(within)
    if not tasks:
        return None
    stat = _platform.read_task_stat(pid)
    if stat is None or stat.kernel:
        return None
    return _Pinned(pid, tasks)


def _ancestry(pid: int) -> Iterator[int]:
    """``pid``'s ancestors, parent first (up to init, at most 64 of them)."""
    for _ in range(64):
        stat = _platform.read_task_stat(pid)
        if stat is None or stat.ppid <= 1:
            return
        pid = stat.ppid
        yield pid


def _descends_from(pid: int, holders: set[int]) -> bool:
    return any(ancestor in holders for ancestor in _ancestry(pid))


def _busy_cpus(found: list[_Pinned]) -> list[frozenset[int]]:
    """The CPUs each process's busy pinned threads hold (see the module's docstring).

    The readings kept for the next survey replace the table whole (no lock: two surveys at
    once may each keep their own, and a lost reading only costs a second look)."""
    now = time.monotonic()
    before, kept = STATE.cpu_samples, {}
    busy: list[set[int]] = [set() for _ in found]
    unsure: list[tuple[int, int, int, int]] = []  # (index, pid, tid, ticks)
    for index, pinned in enumerate(found):
        for tid, cpus in pinned.tasks.items():
            stat = _platform.read_task_stat(pinned.pid, tid)
            if stat is None:
                continue
            key = (tid, stat.started)
            ticks, seen = before.get(key, (stat.ticks, now))
            # A reading too fresh to have seen a tick is kept as the baseline, not replaced.
            kept[key] = (ticks, seen) if now - seen < 1.0 else (stat.ticks, now)
            if stat.state == "R" or stat.ticks > ticks:
                busy[index] |= cpus
            elif now - seen < SECOND_LOOK_SECONDS or now - seen > SAMPLE_SECONDS:
                unsure.append((index, pinned.pid, tid, stat.ticks))
    STATE.cpu_samples = kept
    if unsure:
        time.sleep(SECOND_LOOK_SECONDS)
        for index, pid, tid, ticks in unsure:
            stat = _platform.read_task_stat(pid, tid)
            if stat is not None and (stat.state == "R" or stat.ticks > ticks):
                busy[index] |= found[index].tasks[tid]
    return [frozenset(cpus) for cpus in busy]


def _holder(pid: int, cpus: frozenset[int]) -> LeaseInfo:
    stat = _platform.read_task_stat(pid)
    return LeaseInfo(
        lease_id=f"pinned-{pid}",
        pid=pid,
        cores=cpus,
        command=_platform.process_command(pid),
        since=None if stat is None else _platform.started_at(stat.started),
        uid=_platform.process_uid(pid),
        source="affinity",
    )
