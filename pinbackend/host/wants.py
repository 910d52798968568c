"""Wants: a claim that waits for busy CPUs says so, so that borrowed cores come back.

A pool worker may borrow an idle sibling's cores while its task runs (:mod:`.lending`).
Those cores are leased like any others; a claim that finds them busy writes a *want*, the
CPUs it waits for in its lease scope, and every borrower in that scope gives back the loans
that a live want names (it looks every :data:`~.lending.RECALL_POLL_SECONDS` while
it holds any) and borrows none of them while the want lives. Loans therefore never keep a
claimant waiting longer than one look and one lock poll.

Layout: ``REGISTRY/wants/PID-TOKEN.json`` (``{"pid": PID, "scope": SCOPE, "cpus": [...]}``),
mode 0600 in the user's private registry (one folder for every scope: scope folders are
removed with their last lease), removed with its last want. A want whose process ended
counts for nothing and is removed by the next reader. Borrowers read the folder only when it
changed, or while it has wants.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from .. import _platform
from .host_wants import HostWants, changed_lately
from .registry import LeaseError, is_cpu_list, is_pid, private_dir, read_record, registry_dir

__all__ = ["ClaimWait", "Wants", "post_want", "remove_dead_wants", "withdraw_want"]

WANTS_FOLDER = "wants"
_ATTEMPTS = 3
#: How long a claim waits at least for CPUs only loans hold: their borrowers look for wants
#: every few hundredths of a second (:data:`.lending.RECALL_POLL_SECONDS`).
RECALL_SECONDS = 1.0

OnlyLoans = Callable[[Path, frozenset[int], str], bool]


def post_want(
    scope: str, cpus: frozenset[int], *, share: bool = False, job: int | None = None
) -> Path | None:
    """Say that this process waits for ``cpus`` of lease scope ``scope``; return the want's
    path (None where it cannot be written: the claim still waits, borrowers do not hear).
    ``share``: this process's job (``job``: its pool's planner; default itself) asks for
    its fair share of the cores other jobs' pools hold (:mod:`.fair`), for as long as the
    want lives."""
    want = {"pid": os.getpid(), "scope": scope, "cpus": sorted(cpus), "share": share}
    if job is not None:
        want["job"] = job
    body = json.dumps(want).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _platform.SAFE_OPEN_FLAGS
    for _ in range(_ATTEMPTS):  # the last want's withdrawal may remove the folder meanwhile
        try:
            path = _folder() / f"{os.getpid()}-{secrets.token_hex(4)}.json"
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            continue
        except (OSError, LeaseError):
            return None
        try:
            os.write(fd, body)
        except OSError:
            withdraw_want(path)
            return None
        finally:
            os.close(fd)
        return path
    return None


def withdraw_want(path: Path | None) -> None:
    """Remove a want this process posted, and the folder with the last one (nothing if
    there is none)."""
    if path is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)
        os.rmdir(path.parent)  # fails, harmlessly, while other wants are there


def _folder() -> Path:
    return private_dir(registry_dir() / WANTS_FOLDER)


def remove_dead_wants() -> None:
    """Remove the wants of processes that ended (killed while they waited), and the folder
    if none is left; best effort."""
    with contextlib.suppress(OSError, LeaseError):
        Wants("").cpus()
        os.rmdir(registry_dir() / WANTS_FOLDER)  # fails, harmlessly, while wants are there


class Wants:
    """The CPUs that other live processes' wants ask for in one lease scope, read again only
    when the folder changed or holds wants (one ``stat`` per look otherwise)."""

    def __init__(self, scope: str, host: HostWants | None = None) -> None:
        self._scope = scope
        #: Other users' share wants too (the host registry's; top-level scope only).
        self._host = host if not scope else None
        self._folder: Path | None = None
        self._stamp: int | None = None
        self._pending = False
        self._cpus: frozenset[int] = frozenset()
        self._sharers: dict[str, int] = {}

    def askers(self) -> dict[str, int]:
        """Other live processes' requests for a fair share in this scope, want name ->
        the job that asks (:func:`.fair.job_of`): this user's, and every user's where the
        host registry carries them."""
        self.cpus()
        if self._host is None:
            return self._sharers
        return {**self._sharers, **self._host.askers()}

    def cpus(self) -> frozenset[int]:
        """The CPUs other live processes wait for in this scope."""
        try:
            if self._folder is None:
                self._folder = registry_dir() / WANTS_FOLDER
            stamp = os.stat(self._folder).st_mtime_ns
        except FileNotFoundError:
            self._stamp, self._cpus, self._pending = None, frozenset(), False
            self._sharers = {}
            return self._cpus
        except (OSError, LeaseError):
            return frozenset()
        # Re-read while wants are there: one whose process died is dropped at the next look.
        if stamp != self._stamp or self._pending or changed_lately(stamp):
            self._stamp = stamp
            self._pending = self._read(self._folder)
        return self._cpus

    def _read(self, folder: Path) -> bool:
        """Read every want; return whether there are any (this process's own included)."""
        wanted: set[int] = set()
        sharers: dict[str, int] = {}
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        for name in names:
            want = _read_want(folder / name)
            if want is None:
                continue
            pid, scope, cpus, share, job = want
            if not _alive(pid):
                withdraw_want(folder / name)
                continue
            if pid != os.getpid() and scope == self._scope:
                wanted |= cpus
                if share:
                    sharers[name] = job
        self._cpus, self._sharers = frozenset(wanted), sharers
        return bool(names)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not: its parent has not reaped it yet)."""
    task = _platform.read_task_stat(pid)
    return task is not None and task.state != "Z"


def _read_want(path: Path) -> tuple[int, str, frozenset[int], bool, int] | None:
    """(pid, scope, CPUs, share, job) of a want file; None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
    except OSError:
        return None
    try:
        data = read_record(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if data is None or not is_pid(data.get("pid")):
        return None
    if not isinstance(data.get("scope"), str) or not is_cpu_list(data.get("cpus")):
        return None
    job = data.get("job", data["pid"])
    if not is_pid(job):
        return None
    return data["pid"], data["scope"], frozenset(data["cpus"]), data.get("share") is True, job


class ClaimWait:
    """A claim's wait for busy CPUs: up to ``timeout``, and, where only loans hold them
    (``only_loans(directory, busy, scope)``), at least :data:`RECALL_SECONDS`: they come
    back on demand. While it waits, a want names the busy CPUs."""

    def __init__(self, scope: str, timeout: float, only_loans: OnlyLoans) -> None:
        self.scope = scope
        self._only_loans = only_loans
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._want: Path | None = None
        self._waited = False

    def again(self, directory: Path, busy: frozenset[int]) -> bool:
        """Whether to poll again for ``busy`` (posting the want the first time)."""
        if time.monotonic() >= self._deadline:
            if self._waited or not self._only_loans(directory, busy, self.scope):
                return False
            self.timeout = RECALL_SECONDS
            self._deadline = time.monotonic() + RECALL_SECONDS
        self._waited = True
        if self._want is None:
            self._want = post_want(self.scope, busy)
        return True

    def __enter__(self) -> ClaimWait:
        return self

    def __exit__(self, *exc_info) -> None:
        withdraw_want(self._want)
