"""Chaos: joblib jobs and ``run`` commands started and killed at random, for about a minute.

While they come and go, every live lease holder's threads are sampled: each runs on its
lease's cores only, so no two jobs share a core. At the end nothing is left behind: no
lease, no process, no file in the registry, and no job hung.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from pinbackend import _platform
from pinbackend.host.leases import list_leases

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs"),
]

SECONDS = float(os.environ.get("PINBACKEND_CHAOS_SECONDS", "45"))
JOB_DEADLINE = 60.0

JOBLIB_JOB = textwrap.dedent(
    """
    import sys, time
    from joblib import Parallel, delayed
    import pinbackend

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return seconds

    n_jobs = int(sys.argv[1])
    for _ in range(3):
        Parallel(n_jobs=n_jobs, backend="pinned", oversubscribe="clamp", claim_timeout=20)(
            delayed(spin)(0.2) for _ in range(4)
        )
    pinbackend.shutdown_workers()
    """
)
RUN_JOB = [
    sys.executable,
    "-m",
    "pinbackend",
    "run",
    "-n",
    "1",
    "--wait",
    "20",
    "--",
    sys.executable,
    "-c",
    "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass",
]


def _start(rng: random.Random) -> subprocess.Popen:
    if rng.random() < 0.5:
        command = [sys.executable, "-c", JOBLIB_JOB, str(rng.choice([-1, 1, 2]))]
    else:
        command = RUN_JOB
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _overlaps() -> list[str]:
    """Threads of a lease holder outside its lease's cores (leases older than a second:
    a worker pins itself right after claiming)."""
    found = []
    for info in list_leases(scope=None):
        if info.pid is None or info.shared or time.time() - (info.since or 0) < 1.0:
            continue
        try:
            masks = _platform.thread_affinities(info.pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid, cpus in masks.items():
            if not cpus <= info.cores:
                found.append(f"pid {info.pid} thread {tid} on {sorted(cpus)}, lease {info}")
    return found


def _descendants_of(jobs: list[subprocess.Popen]) -> list[psutil.Process]:
    """Every live process of these jobs' sessions (workers included, even reparented)."""
    sessions = {job.pid for job in jobs}
    alive = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) in sessions and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def test_random_starts_and_kills_never_overlap_hang_or_leak(lease_registry):
    rng = random.Random(20261201)
    jobs: list[subprocess.Popen] = []
    started_at: dict[int, float] = {}
    overlaps: list[str] = []
    kills = samples = 0
    end = time.monotonic() + SECONDS
    try:
        while time.monotonic() < end:
            live = [job for job in jobs if job.poll() is None]
            if len(live) < 4 and rng.random() < 0.5:
                job = _start(rng)
                jobs.append(job)
                started_at[job.pid] = time.monotonic()
            elif live and rng.random() < 0.25:
                # Kill a job's own process only: its workers must follow by themselves.
                victim = rng.choice(live)
                os.kill(victim.pid, rng.choice([signal.SIGKILL, signal.SIGTERM]))
                kills += 1
            for job in live:
                assert time.monotonic() - started_at[job.pid] < JOB_DEADLINE, "a job hung"
            overlaps += _overlaps()
            samples += 1
            time.sleep(rng.uniform(0.05, 0.3))
        for job in jobs:
            job.wait(timeout=JOB_DEADLINE)
        # Workers of killed jobs exit through their owner watch; give them a moment.
        deadline = time.monotonic() + 10
        while _descendants_of(jobs) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftover = _descendants_of(jobs)
    finally:
        for process in _descendants_of(jobs):
            process.kill()
        for job in jobs:
            if job.poll() is None:
                job.kill()
            job.wait()
            job.stderr.close()
    assert len(jobs) >= 10 and kills >= 3 and samples >= 50, (len(jobs), kills, samples)
    assert overlaps == []
    assert leftover == []
    assert list_leases(scope=None) == []
    assert sorted(p.name for p in lease_registry.iterdir() if not p.name.startswith("cpu-")) == []
