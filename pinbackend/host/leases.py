"""Host-local core leases: which process holds which CPUs, without a central server.

A lease on a CPU is an exclusive ``flock`` on that CPU's lock file in a per-user runtime
directory. The kernel drops the lock when the holder dies (SIGKILL included), so a crashed
worker's cores are free at once. Every process on the host (workers of one pool, several
``dask worker`` runs, separate jobs) claims through the same files, so each holds a
different set of CPUs. A nested pool claims inside its parent lease's *scope* (a
sub-directory), subdividing the parent's cores instead of competing for them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import _platform
from ..core.cpuset import format_cpu_list

__all__ = [
    "REGISTRY_ENV",
    "Lease",
    "LeaseConflict",
    "LeaseError",
    "LeaseInfo",
    "RegistryError",
    "busy_cpus",
    "claim",
    "claim_first_free",
    "held_leases",
    "list_leases",
    "registry_dir",
]

#: Environment variable that overrides where the lease files live.
REGISTRY_ENV = "PINBACKEND_RUNTIME_DIR"
_POLL_SECONDS = 0.05
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | _platform.SAFE_OPEN_FLAGS


class LeaseError(RuntimeError):
    """A lease could not be taken or the registry cannot be used."""


class RegistryError(LeaseError):
    """The lease registry directory or one of its files is unsafe or unusable (fails closed)."""


class LeaseConflict(LeaseError):
    """Some requested CPUs are held by another live lease."""

    def __init__(self, message: str, busy: frozenset[int], holders: Sequence[LeaseInfo]):
        super().__init__(message)
        self.busy = busy
        self.holders = tuple(holders)


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file says about its holder (``pid`` is None when the record is unreadable)."""

    lease_id: str
    pid: int | None
    cores: frozenset[int]
    command: str
    since: float | None = None
    scope: str = ""
    shared: frozenset[int] = frozenset()
    owner: int | None = None

    def to_dict(self) -> dict:
        """Plain-data form used by ``status --json``."""
        return {
            "lease_id": self.lease_id,
            "pid": self.pid,
            "cores": sorted(self.cores),
            "command": self.command,
            "since": self.since,
            "scope": self.scope,
            "shared": sorted(self.shared),
            "owner": self.owner,
        }


def registry_dir() -> Path:
    """Return the checked per-user lease directory, creating it (mode 0700) when missing.

    ``$PINBACKEND_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/pinbackend``, else
    ``<tempdir>/pinbackend-<uid>``. It must be a real directory owned by us with no access
    for group or others; anything else raises :class:`RegistryError`.
    """
    if not _platform.CAN_LOCK_FILES:
        raise RegistryError(f"core leases need flock(), which {sys.platform} does not have")
    override = os.environ.get(REGISTRY_ENV)
    if override:
        path = Path(override)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "pinbackend"
    else:
        path = Path(tempfile.gettempdir()) / f"pinbackend-{os.getuid()}"
    _ensure_private_dir(path)
    return path


def _ensure_private_dir(path: Path) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise RegistryError(
            f"cannot create the lease directory {path}: {error.strerror}; set "
            f"{REGISTRY_ENV} to a writable private directory"
        ) from None
    info = os.lstat(path)
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != os.getuid():
        problem = f"is owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    elif info.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0700"
    if problem:
        raise RegistryError(
            f"refusing to use lease directory {path}: it {problem}. Remove it, fix it "
            f"(chmod 700), or set {REGISTRY_ENV} to a private directory of yours"
        )


def _scope_dir(scope: str) -> Path:
    base = registry_dir()
    if not scope:
        return base
    path = base / f"scope-{scope}"
    _ensure_private_dir(path)
    return path


def _open_lock(directory: Path, cpu: int) -> int:
    """Open (creating) one CPU's lock file safely: no symlinks, regular file, ours, one link."""
    path = directory / f"cpu-{cpu}.lock"
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as error:
        raise RegistryError(
            f"refusing lease file {path}: {error.strerror} (a symbolic link or something that "
            f"is not a regular file was planted there?); remove it or set {REGISTRY_ENV}"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
        os.close(fd)
        raise RegistryError(
            f"refusing lease file {path}: not a private regular file of yours "
            f"(uid {info.st_uid}, {info.st_nlink} links); remove it or set {REGISTRY_ENV}"
        )
    return fd


def _read_record(fd: int, cpu: int, scope: str) -> LeaseInfo:
    for _ in range(3):
        raw = os.pread(fd, 65536, 0)
        try:
            data = json.loads(raw)
            return LeaseInfo(
                lease_id=str(data["lease_id"]),
                pid=int(data["pid"]),
                cores=frozenset(int(c) for c in data["cores"]),
                command=str(data["command"]),
                since=float(data["since"]),
                scope=scope,
                shared=frozenset(int(c) for c in data.get("shared", ())),
                owner=data.get("owner"),
            )
        except (ValueError, KeyError, TypeError):
            time.sleep(0.01)  # the holder may be writing its record right now
    return LeaseInfo(
        f"unknown-cpu-{cpu}", None, frozenset({cpu}), "(unreadable record)", None, scope
    )


@dataclass(eq=False)
class Lease:
    """A held set of CPUs. Release it (or use it as a context manager) when done."""

    info: LeaseInfo
    _fds: dict[int, int] = field(repr=False)

    @property
    def cores(self) -> frozenset[int]:
        """CPUs this lease covers (shared ones included)."""
        return self.info.cores

    @property
    def lease_id(self) -> str:
        """Unique id; nested pools use it as their scope."""
        return self.info.lease_id

    @property
    def held(self) -> bool:
        """Whether this process still holds the lease."""
        return bool(self._fds)

    def fds(self) -> list[int]:
        """The lock descriptors (to hand the lease to a program we ``exec``)."""
        return list(self._fds.values())

    def release(self) -> None:
        """Drop the lease (idempotent) and clean up the scope its nested pools used."""
        with _TABLE_LOCK:
            _HELD.pop(self.lease_id, None)
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
        _remove_idle_scope(self.lease_id)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


_HELD: dict[str, Lease] = {}
_TABLE_LOCK = threading.Lock()


def _forget_leases_in_child() -> None:
    # A forked child shares the parent's lock descriptions; closing our copies keeps the
    # parent's locks intact (no LOCK_UN) and makes sure the child never holds them alone.
    global _TABLE_LOCK
    _TABLE_LOCK = threading.Lock()
    for lease in _HELD.values():
        for fd in lease._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        lease._fds = {}
    _HELD.clear()


_platform.forget_in_forked_child(_forget_leases_in_child)


def held_leases() -> list[Lease]:
    """Leases held by this process."""
    with _TABLE_LOCK:
        return list(_HELD.values())


def claim(
    cores: Iterable[int],
    *,
    scope: str = "",
    share: bool = False,
    timeout: float = 0.0,
    command: str | None = None,
    owner: int | None = None,
) -> Lease:
    """Take a lease on exactly ``cores``.

    Waits up to ``timeout`` seconds for busy CPUs to become free, then raises
    :class:`LeaseConflict` naming them and their holders, unless ``share`` is true: then the
    busy CPUs are used without holding them (the lease records them as shared) and the
    caller is expected to warn. ``owner`` is the pid of the process that planned the pool
    this lease belongs to (a pool's own workers do not count as busy when it plans again).
    """
    cores = _lease_set(cores)
    directory = _scope_dir(scope)
    deadline = time.monotonic() + timeout
    while True:
        fds, busy = _try_lock_all(directory, cores)
        if not busy or share or time.monotonic() >= deadline:
            break
        _close_all(fds)
        time.sleep(_POLL_SECONDS)
    if busy and not share:
        _close_all(fds)
        raise _conflict(directory, busy, scope)
    return _hold(cores, fds, scope=scope, shared=busy, command=command, owner=owner)


def claim_first_free(
    candidates: Sequence[Iterable[int]],
    *,
    scope: str = "",
    timeout: float = 0.0,
    owner: int | None = None,
) -> Lease:
    """Lease the first candidate core set that is entirely free, waiting up to ``timeout``."""
    candidates = [_lease_set(c) for c in candidates]
    if not candidates:
        raise LeaseError("no candidate core sets to claim from; plan at least one slot")
    deadline = time.monotonic() + timeout
    while True:
        # Resolved each round: the scope folder is removed when its last lease ends.
        directory = _scope_dir(scope)
        for cores in candidates:
            fds, busy = _try_lock_all(directory, cores)
            if not busy:
                return _hold(cores, fds, scope=scope, shared=busy, command=None, owner=owner)
            _close_all(fds)
        if time.monotonic() >= deadline:
            # Who holds what is read once, for the message, not on every poll.
            last = _conflict(directory, busy, scope)
            raise LeaseConflict(
                f"none of the {len(candidates)} planned core sets is free "
                f"({'; '.join(format_cpu_list(c) for c in candidates)}); last: {last}",
                last.busy,
                last.holders,
            )
        time.sleep(_POLL_SECONDS)


def _lease_set(cores: Iterable[int]) -> frozenset[int]:
    cores = frozenset(cores)
    if not cores:
        raise LeaseError("cannot lease an empty set of CPUs; name at least one CPU")
    return cores


def _conflict(directory: Path, busy: frozenset[int], scope: str) -> LeaseConflict:
    holders = _holders(directory, busy, scope)
    return LeaseConflict(
        f"CPUs {format_cpu_list(busy)} are held by "
        + "; ".join(_describe_holder(h) for h in holders)
        + ". Pick other CPUs, wait for those jobs, or allow sharing",
        busy,
        holders,
    )


def _describe_holder(holder: LeaseInfo) -> str:
    if holder.pid is None:
        return (
            f"an unknown process (its record of CPU {format_cpu_list(holder.cores)} is "
            f"unreadable; `python -m pinbackend status` lists the lock files)"
        )
    return f"pid {holder.pid} ({holder.command})"


def _hold(
    cores: frozenset[int],
    fds: dict[int, int],
    *,
    scope: str,
    shared: frozenset[int],
    command: str | None,
    owner: int | None,
) -> Lease:
    """Record the lease in every lock file it holds and keep it in this process's table."""
    info = LeaseInfo(
        lease_id=uuid.uuid4().hex[:12],
        pid=os.getpid(),
        cores=cores,
        command=command if command is not None else _own_command(),
        since=time.time(),
        scope=scope,
        shared=shared,
        owner=owner,
    )
    record = json.dumps(info.to_dict()).encode()
    for fd in fds.values():
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    lease = Lease(info, fds)
    with _TABLE_LOCK:
        _HELD[info.lease_id] = lease
    return lease


def _try_lock_all(directory: Path, cores: frozenset[int]) -> tuple[dict[int, int], frozenset]:
    fds: dict[int, int] = {}
    busy = set()
    try:
        for cpu in sorted(cores):
            fd = _open_lock(directory, cpu)
            if _platform.lock_exclusive(fd):
                fds[cpu] = fd
            else:
                os.close(fd)
                busy.add(cpu)
    except BaseException:
        _close_all(fds)
        raise
    return fds, frozenset(busy)


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)


def _own_command() -> str:
    return " ".join(sys.argv) or sys.executable


def _holders(directory: Path, cpus: Iterable[int], scope: str) -> list[LeaseInfo]:
    found: dict[str, LeaseInfo] = {}
    for cpu in sorted(cpus):
        path = directory / f"cpu-{cpu}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
        except OSError:
            continue
        try:
            if _platform.probe_lock(fd):
                info = _read_record(fd, cpu, scope)
                found.setdefault(info.lease_id, info)
        finally:
            os.close(fd)
    return list(found.values())


def list_leases(scope: str | None = "") -> list[LeaseInfo]:
    """Return the live leases in a scope, oldest first.

    ``""`` is the host scope (top-level leases); a lease id is the scope of the pools nested
    inside that lease; ``None`` lists every scope.
    """
    if scope is None:
        scopes = [""] + [
            entry.name.removeprefix("scope-")
            for entry in os.scandir(registry_dir())
            if entry.name.startswith("scope-") and entry.is_dir(follow_symlinks=False)
        ]
        return [info for name in scopes for info in list_leases(name)]
    directory = _scope_dir(scope)
    cpus = []
    for entry in os.listdir(directory):
        if entry.startswith("cpu-") and entry.endswith(".lock"):
            try:
                cpus.append(int(entry[4:-5]))
            except ValueError:
                continue
    leases = _holders(directory, cpus, scope)
    return sorted(leases, key=lambda info: (info.since or 0.0, info.lease_id))


def busy_cpus(scope: str = "", *, ignore_owner: int | None = None) -> frozenset[int]:
    """Return the CPUs that live leases in ``scope`` hold (shared ones are not held).

    Leases of pools planned by ``ignore_owner`` are left out: a pool re-planning must not
    count its own workers as strangers.
    """
    return frozenset().union(
        *(
            info.cores - info.shared
            for info in list_leases(scope)
            if ignore_owner is None or info.owner != ignore_owner
        )
    )


def _remove_idle_scope(lease_id: str) -> None:
    try:
        path = registry_dir() / f"scope-{lease_id}"
    except RegistryError:
        return
    if not path.is_dir() or path.is_symlink():
        return
    if not list_leases(lease_id):
        shutil.rmtree(path, ignore_errors=True)
