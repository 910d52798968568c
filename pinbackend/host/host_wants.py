"""Share wants between users: a job's request for its fair share (:mod:`.fair`), posted
where every user's pool workers read it, in the host registry (:mod:`.hostreg`).

Without a host registry each user's wants live in their private registry, so a job of
another user never hears them (it sees only the newcomer's pinned processes, which are
not waiting for anything). With one, a top-level share want is a file in ``DIR/wants``::

    DIR/wants/            root, the registry's own mode (1777, or root:GROUP 1770): sticky,
                          so nobody removes or renames another user's want; made by
                          ``host init`` (a registry made before it has none: users' shares
                          then stay within each user, as without a host registry)
    DIR/wants/share-UID-PID-TOKEN.json   mode 0644, the asker's: {"pid", "started", "cpus",
                          "job"} (job: the pool's planner, for a pool worker's request)

Nothing in a want is taken on trust: it counts only while the file is a regular file of
one name, owned by the uid its name says and writable by nobody else, and the process it
names is alive, runs as that uid and started when the want says (a reused pid does not
inherit a want). A dead process's want is removed by the next process of its user that
reads the folder; other users' readers skip it. At most :data:`MAX_WANTS` entries are read
per look, so a user who fills the folder costs others a bounded read, and at worst hides
wants: newcomers then wait, as without a host registry.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path

from .. import _platform
from .hostreg import HostRegistry, dir_problem, find_host_registry
from .registry import is_cpu_list, is_pid, read_record

__all__ = ["HOST_WANTS_FOLDER", "MAX_WANTS", "HostWants", "changed_lately", "host_wants"]

HOST_WANTS_FOLDER = "wants"
#: The most entries read from the folder per look (any user may fill it with files).
MAX_WANTS = 256
_WANT_MODE = 0o644
_NAME = re.compile(r"share-(\d{1,10})-(\d{1,10})-[0-9a-f]{8}\.json")


#: A folder changed this recently may change again within its file system's timestamp
#: granularity (a clock tick, 4 ms on ext4) without its time changing: read it again.
_COARSE_NS = 50_000_000


def changed_lately(mtime_ns: int) -> bool:
    """Whether a folder's modification time is too recent to tell a later change by it."""
    return time.time_ns() - mtime_ns < _COARSE_NS


def host_wants() -> HostWants | None:
    """The host registry's share wants, where a host registry with a safe wants folder is
    in use; None otherwise (share wants then stay in the user's own registry)."""
    registry = find_host_registry()
    if registry is None:
        return None
    wants = HostWants(registry)
    return wants if wants.usable() else None


class HostWants:
    """The share wants of every user in one host registry: posting this process's, and a
    cached look at the others' (one ``lstat`` per look while none is live)."""

    def __init__(self, registry: HostRegistry) -> None:
        self.folder = registry.path / HOST_WANTS_FOLDER
        self._stamp: int | None = None
        self._live = False
        self._askers: dict[str, int] = {}

    def usable(self) -> bool:
        """Whether the folder is there and root's (sticky where others may write)."""
        try:
            return dir_problem(os.lstat(self.folder)) is None
        except OSError:
            return False

    def post(self, cpus: frozenset[int], job: int | None = None) -> Path | None:
        """Ask for a fair share of ``cpus`` for ``job`` (a pool worker's planner; default
        this process); the want's path (None where it cannot be written: the job still
        waits, others' pools do not hear)."""
        me = os.getpid()
        task = _platform.read_task_stat(me)
        if task is None or not self.usable():
            return None
        want = {"pid": me, "started": task.started, "cpus": sorted(cpus), "job": job or me}
        body = json.dumps(want)
        path = self.folder / f"share-{os.geteuid()}-{me}-{secrets.token_hex(4)}.json"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _platform.SAFE_OPEN_FLAGS
        try:
            fd = os.open(path, flags, _WANT_MODE)
        except OSError:
            return None
        try:
            os.fchmod(fd, _WANT_MODE)  # whatever the umask: every user's workers read it
            os.write(fd, body.encode())
        except OSError:
            withdraw(path)
            return None
        finally:
            os.close(fd)
        return path

    def askers(self) -> dict[str, int]:
        """Other live processes' share wants, want name -> asking pid, any user's."""
        try:
            info = os.lstat(self.folder)
        except OSError:
            self._stamp, self._live, self._askers = None, False, {}
            return self._askers
        if dir_problem(info) is not None:
            self._askers = {}
            return self._askers
        # Read again while live wants are there: a process may end without withdrawing.
        if info.st_mtime_ns != self._stamp or self._live or changed_lately(info.st_mtime_ns):
            self._stamp = info.st_mtime_ns
            self._askers = self._read()
            self._live = bool(self._askers)
        return self._askers

    def _read(self) -> dict[str, int]:
        askers: dict[str, int] = {}
        try:
            with os.scandir(self.folder) as entries:
                names = [entry.name for entry in itertools.islice(entries, MAX_WANTS)]
        except OSError:
            return askers
        for name in names:
            match = _NAME.fullmatch(name)
            if match is None:
                continue
            uid, pid = int(match[1]), int(match[2])
            if pid == os.getpid():
                continue
            state, job = _check_want(self.folder / name, uid, pid)
            if state == "live":
                askers[name] = job
            elif state == "dead" and uid == os.geteuid():
                withdraw(self.folder / name)
        return askers


def withdraw(path: Path | None) -> None:
    """Remove a want this process posted (nothing if there is none)."""
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _check_want(path: Path, uid: int, pid: int) -> tuple[str, int]:
    """("live", job) for a want to count (the job it asks for: its pid's, or that pool
    worker's planner, a process of the same user); ("dead", pid) where its process ended or
    the pid was reused; ("bad", pid) for anything its user did not make: skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
    except OSError:
        return "bad", pid
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid or info.st_nlink != 1:
            return "bad", pid
        if info.st_mode & 0o022:
            return "bad", pid
        data = read_record(fd)
    except OSError:
        return "bad", pid
    finally:
        os.close(fd)
    if data is None or data.get("pid") != pid or not is_cpu_list(data.get("cpus")):
        return "bad", pid
    started, job = data.get("started"), data.get("job", pid)
    if type(started) is not int or started < 0 or not is_pid(job):
        return "bad", pid
    task = _platform.read_task_stat(pid)
    if task is None or task.state == "Z" or task.started != started:
        return "dead", pid
    if _platform.process_uid(pid) != uid:
        return "dead", pid
    # Another user's process named as the job would make its pools count themselves.
    if job != pid and _platform.process_uid(job) != uid:
        return "bad", pid
    return "live", job
