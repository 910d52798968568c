"""Job records: which runner invocation (``python -m pinbackend script.py``) owns which leases.

A job is one process that starts pools on behalf of a user's program. Its record is a small
JSON file in the lease registry, named after its pid and removed when the job ends. The
record is only a label: leases stay the source of truth for who holds which CPUs, and a
lease belongs to a job when the job's process is an ancestor of the lease's holder (pool
workers, forkserver children, nested pools and ``pinbackend run`` commands started from the
job all qualify). A record whose process is gone (SIGTERM and SIGKILL skip the cleanup at
exit) or whose pid was reused by another process (start time differs) is stale: the next
process that lists or registers jobs removes it. A record that does not check out (another
version, a bug, something hostile) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psutil

from .. import _platform
from .holders import LeaseInfo
from .registry import is_pid, is_timestamp, read_record, registry_dir, registry_failure

__all__ = ["Job", "JobInfo", "job_of", "list_jobs", "register_job"]

_PREFIX = "job-"
_SUFFIX = ".json"
_MAX_OPTIONS = 64
_OPTION_TYPES = (str, int, float, bool, type(None))


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
    """Write this process's job record (atomically, in the private lease registry).

    Stale records of other jobs are removed first. A record that cannot be written (disk
    full, read-only) raises :class:`RegistryError` and leaves no temporary file behind.
    """
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
    _scan(directory)
    path = directory / f"{_PREFIX}{pid}{_SUFFIX}"
    # Write then rename: a reader never sees half a record.
    try:
        fd, temporary = tempfile.mkstemp(prefix=".job-", dir=directory)
    except OSError as error:
        raise registry_failure("create a job record in", directory, error) from None
    try:
        with os.fdopen(fd, "w") as stream:
            json.dump(data, stream)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise registry_failure("write the job record", path, error) from None
        raise
    return Job(info, str(path))


def _read(path: str) -> tuple[JobInfo, tuple[int, int]] | None:
    """A job record and the identity (device, inode) of its file; None if it does not check out."""
    try:
        fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        data = read_record(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if data is None or not _valid(data, path):
        return None
    job = JobInfo(
        pid=data["pid"],
        command=data["command"],
        since=float(data["since"]),
        options=dict(data.get("options") or {}),
        create_time=float(data["create_time"]),
    )
    return job, (info.st_dev, info.st_ino)


def _valid(data: dict, path: str) -> bool:
    """Whether a parsed record is one a job of ours could have written, under its own name."""
    options = data.get("options") or {}
    return (
        is_pid(data.get("pid"))
        and os.path.basename(path) == f"{_PREFIX}{data['pid']}{_SUFFIX}"
        and isinstance(data.get("command"), str)
        and is_timestamp(data.get("since"))
        and is_timestamp(data.get("create_time"))
        and isinstance(options, dict)
        and len(options) <= _MAX_OPTIONS
        and all(type(value) in _OPTION_TYPES for value in options.values())
    )


def _alive(info: JobInfo) -> bool | None:
    """Whether the job's process still runs; None when the OS will not say."""
    try:
        process = psutil.Process(info.pid)
        # A reused pid belongs to a different process with a different start time.
        return (
            abs(process.create_time() - (info.create_time or 0.0)) < 0.01
            and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.AccessDenied:
        return None
    except psutil.Error:
        return False


def _scan(directory) -> list[JobInfo]:
    """The live jobs recorded in ``directory``; stale records found on the way are removed."""
    jobs = []
    for entry in os.scandir(directory):
        if not (entry.name.startswith(_PREFIX) and entry.name.endswith(_SUFFIX)):
            continue
        record = _read(entry.path)
        if record is None:
            continue
        info, identity = record
        alive = _alive(info)
        if alive:
            jobs.append(info)
        elif alive is False:
            _remove_stale(entry.path, identity)
    return jobs


def _remove_stale(path: str, identity: tuple[int, int]) -> None:
    """Remove a stale record, but only if ``path`` is still the file that was read.

    The process that has the stale record's pid now may have written its own record there
    since: renaming moves whatever is at ``path`` aside atomically, so we can look before we
    delete, and put a live record back (unless an even newer one took its place).
    """
    aside = os.path.join(os.path.dirname(path), f".stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except OSError:
        return  # removed by another reader already, or a read-only registry
    try:
        moved = os.lstat(aside)
        if (moved.st_dev, moved.st_ino) != identity:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.unlink(aside)


def list_jobs() -> list[JobInfo]:
    """Return the live jobs on this host (per registry), oldest first; forget stale ones."""
    jobs = _scan(registry_dir())
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
