"""Job records: which runner invocation (``python -m pinbackend script.py``) owns which leases.

A job is one process that starts pools on behalf of a user's program. Its record is a small
JSON file in the lease registry, named after its pid and removed when the job ends. The
record is only a label: leases stay the source of truth for who holds which CPUs, and a
lease belongs to a job when the job's process is an ancestor of the lease's holder (pool
workers, forkserver children, nested pools and ``pinbackend run`` commands started from the
job all qualify). A record whose process is gone (SIGKILL) or whose pid was reused by
another process (start time differs) is ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psutil

from .. import _platform
from .leases import LeaseInfo, registry_dir

__all__ = ["Job", "JobInfo", "job_of", "list_jobs", "register_job"]

_PREFIX = "job-"
_SUFFIX = ".json"
_MAX_RECORD = 65536


@dataclass(frozen=True)
class JobInfo:
    """What a job record says: the job's pid, how it was started and with which options."""

    pid: int
    command: str
    since: float
    options: Mapping[str, object] = field(default_factory=dict)
    create_time: float | None = None

    def to_dict(self) -> dict:
        """Plain-data form used by ``status --json``."""
        return {
            "pid": self.pid,
            "command": self.command,
            "since": self.since,
            "options": dict(self.options),
        }


class Job:
    """This process's job record; :meth:`end` (or process exit) removes it."""

    def __init__(self, info: JobInfo, path: str):
        self.info = info
        self._path = path

    def end(self) -> None:
        """Remove the record (idempotent; only the process that wrote it removes it)."""
        if self._path and os.getpid() == self.info.pid:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
        self._path = ""


def register_job(command: str, options: Mapping[str, object]) -> Job:
    """Write this process's job record (atomically, in the private lease registry)."""
    pid = os.getpid()
    info = JobInfo(
        pid=pid,
        command=command,
        since=time.time(),
        options=dict(options),
        create_time=psutil.Process(pid).create_time(),
    )
    data = {**info.to_dict(), "create_time": info.create_time}
    directory = registry_dir()
    # Write then rename: a reader never sees half a record.
    fd, temporary = tempfile.mkstemp(prefix=".job-", dir=directory)
    try:
        with os.fdopen(fd, "w") as stream:
            json.dump(data, stream)
        path = str(directory / f"{_PREFIX}{pid}{_SUFFIX}")
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return Job(info, path)


def _read(path: str) -> JobInfo | None:
    try:
        fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
    except OSError:
        return None
    try:
        data = json.loads(os.read(fd, _MAX_RECORD))
        return JobInfo(
            pid=int(data["pid"]),
            command=str(data["command"]),
            since=float(data["since"]),
            options=dict(data.get("options") or {}),
            create_time=float(data["create_time"]),
        )
    except (ValueError, KeyError, TypeError, OSError):
        return None
    finally:
        os.close(fd)


def _alive(info: JobInfo) -> bool:
    try:
        process = psutil.Process(info.pid)
        # A reused pid belongs to a different process with a different start time.
        return (
            abs(process.create_time() - (info.create_time or 0.0)) < 0.01
            and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def list_jobs() -> list[JobInfo]:
    """Return the live jobs on this host (per registry), oldest first."""
    directory = registry_dir()
    jobs = []
    for entry in os.scandir(directory):
        if entry.name.startswith(_PREFIX) and entry.name.endswith(_SUFFIX):
            info = _read(entry.path)
            if info is not None and _alive(info):
                jobs.append(info)
    return sorted(jobs, key=lambda info: (info.since, info.pid))


def job_of(lease: LeaseInfo, jobs: Iterable[JobInfo]) -> JobInfo | None:
    """The job whose process started (directly or not) the holder of ``lease``, if any."""
    by_pid = {job.pid: job for job in jobs}
    if not by_pid or lease.pid is None:
        return None
    if lease.pid in by_pid:
        return by_pid[lease.pid]
    try:
        ancestors = psutil.Process(lease.pid).parents()
    except psutil.Error:
        return None
    return next((by_pid[p.pid] for p in ancestors if p.pid in by_pid), None)
