"""Host-local core leases: which process holds which CPUs, without a central server.

A lease on a CPU is an exclusive ``flock`` on that CPU's lock file in a per-user registry
directory. The kernel drops the lock when the holder dies (SIGKILL included), so a crashed
worker's cores are free at once. Every process on the host (workers of one pool, several
``dask worker`` runs, separate jobs) claims through the same files, so each holds a
different set of CPUs. A nested pool claims inside its parent lease's *scope* (a
sub-directory), subdividing the parent's cores instead of competing for them.

Whatever goes wrong fails closed with one line that names the cause and the remedy: a claim
that cannot finish holds nothing; a held lock whose record cannot be trusted (garbage, another
version, a record being written) counts as held by an unknown process; and a lock file path
that holds something no claim makes (a symlink, FIFO, directory, hard-linked or foreign-owned
file) is refused at once, by every reader and every claim (:class:`UnsafeLeaseFile`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import _platform
from .._docs import troubleshooting
from ..core.cpuset import format_cpu_list
from .locks import PinLock
from .state import STATE

__all__ = [
    "REGISTRY_ENV",
    "Lease",
    "LeaseConflict",
    "LeaseError",
    "LeaseInfo",
    "RegistryError",
    "UnsafeLeaseFile",
    "busy_cpus",
    "claim",
    "claim_first_free",
    "describe_holder",
    "held_leases",
    "list_leases",
    "registry_dir",
]

#: Environment variable that overrides where the lease files live (an absolute path).
REGISTRY_ENV = "PINBACKEND_RUNTIME_DIR"
_POLL_SECONDS = 0.05
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | _platform.SAFE_OPEN_FLAGS
#: Where the registry lives when the variable is unset: one fixed folder per user. Session
#: variables (``XDG_RUNTIME_DIR``, ``TMPDIR``) differ between an ssh login, a cron job and a
#: batch job of one user; a registry that followed them would split the host into registries
#: that cannot see each other's locks, and two jobs would both get CPU 0.
_DEFAULT_PARENT = Path("/tmp")
#: Bounds on what a record read back from a lock or job file may be. A record holds whatever
#: the process that wrote it put there (another version, a bug, something hostile): readers
#: check every field instead of trusting it, and never parse more than this.
RECORD_LIMIT = 1 << 20
_CPU_LIMIT = 1 << 16
_PID_LIMIT = (1 << 31) - 1
_COMMAND_LIMIT = 8192
_LEASE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_LOCK_NAME = re.compile(r"cpu-(0|[1-9][0-9]{0,4})\.lock")
#: How often a claim retries a lock file that the scope collector unlinked under it.
_RELOCK_ATTEMPTS = 10
#: ``open()`` failures that mean "this path is not a lock file we made": a symlink (ELOOP on
#: Linux, EMLINK on the BSDs with O_NOFOLLOW), a FIFO or socket, a directory.
_PLANTED_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR, errno.ENOTDIR})
_REMEDIES = {
    getattr(errno, "EDQUOT", None): "your disk quota is used up: free space",
    errno.ENOSPC: "the file system is full: free space on it",
    errno.EROFS: "the file system is read-only: make it writable",
    errno.EACCES: "make it writable by you (check its owner and mode)",
    errno.EPERM: "make it writable by you (check its owner, mode and attributes)",
}


class LeaseError(RuntimeError):
    """A lease could not be taken or the registry cannot be used."""


class RegistryError(LeaseError):
    """The lease registry directory or one of its files is unsafe or unusable (fails closed)."""


class UnsafeLeaseFile(RegistryError):
    """A lock file path holds something no claim of ours makes: planted, or another user's.

    A symlink, FIFO, socket, device or directory, a file with a second name (hard link) or
    a file another user owns. Its lock would guard nothing we can trust, so no plan goes on
    around it either: the survey and the claim refuse at once, naming the file.
    """

    def __init__(self, path: Path | str, problem: str):
        super().__init__(
            f"refusing lease file {path}: {problem}, not a lock file pinbackend made; "
            f"remove it (pinbackend makes a new one when needed) or set {REGISTRY_ENV} to "
            f"another private directory. See {troubleshooting('unsafe-lease-file')}"
        )
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):
        # Raised in pool workers too: the caller gets it pickled, with its fields.
        return type(self), (self.path, self.problem)


class LeaseConflict(LeaseError):
    """Some requested CPUs are held by another live lease."""

    def __init__(self, message: str, busy: frozenset[int], holders: Sequence[LeaseInfo]):
        super().__init__(message)
        self.busy = busy
        self.holders = tuple(holders)

    def __reduce__(self):
        # A pool worker's claim error travels to the caller pickled: keep every field.
        return type(self), (str(self), self.busy, self.holders)


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


def registry_failure(action: str, path: Path | str, error: OSError) -> RegistryError:
    """One line for an OS error in the registry: what failed where, why, and what to do."""
    remedy = _REMEDIES.get(error.errno, "fix that")
    return RegistryError(
        f"cannot {action} {path}: {error.strerror or error}; {remedy}, or set {REGISTRY_ENV} "
        f"to a private directory elsewhere. See {troubleshooting('lease-registry-unusable')}"
    )


def registry_dir() -> Path:
    """Return the checked per-user lease directory, creating it (mode 0700) when missing.

    ``$PINBACKEND_RUNTIME_DIR`` if set (it must be absolute), else ``/tmp/pinbackend-<uid>``:
    the same folder for every process of a user, whatever its session's environment. Set but
    empty counts as unset, as for ``PINBACKEND_CPU_COUNT`` (``DIR=$UNSET`` in a script lands
    in the default folder, where the user's other jobs are, not in a new one). It must
    be a real directory owned by us with no access for group or others; anything else raises
    :class:`RegistryError`.
    """
    if not _platform.CAN_LOCK_FILES:
        raise RegistryError(f"core leases need flock(), which {sys.platform} does not have")
    override = os.environ.get(REGISTRY_ENV, "")
    if override:
        path = Path(override)
        if not path.is_absolute():
            # A relative path names a different folder in every working directory.
            raise RegistryError(
                f"{REGISTRY_ENV}={override!r} is relative; it must be an absolute path "
                f"(e.g. /tmp/pinbackend-{os.getuid()}), the same for every process"
            )
    else:
        path = _DEFAULT_PARENT / f"pinbackend-{os.getuid()}"
    _ensure_private_dir(path)
    return path


def _ensure_private_dir(path: Path) -> None:
    for _ in range(_RELOCK_ATTEMPTS):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise registry_failure("create the lease directory", path, error) from None
        if _check_private_dir(path):
            return
        # A scope folder the collector removed between our mkdir and our look: make it again.
    raise RegistryError(f"the lease directory {path} keeps disappearing; is something removing it?")


def _check_private_dir(path: Path) -> bool:
    """Check that ``path`` is a private directory of ours; False if it does not exist."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise registry_failure("read the lease directory", path, error) from None
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
    return True


def _scope_dir(scope: str, *, create: bool = True) -> Path | None:
    """The folder of a scope (the registry itself for ``""``); None if missing and not created."""
    base = registry_dir()
    if not scope:
        return base
    if not _LEASE_ID.fullmatch(scope):
        # Scopes come from PINBACKEND_SCOPE: never let one name a path outside the registry.
        raise LeaseError(
            f"lease scope {scope!r} is not a lease id (letters, digits, '-', '_'); "
            f"unset PINBACKEND_SCOPE or set it to the id of a live lease"
        )
    path = base / f"scope-{scope}"
    if create:
        _ensure_private_dir(path)
    elif not _check_private_dir(path):
        return None
    return path


def _is_lock_file(info: os.stat_result) -> bool:
    """A lock file we made: a regular file of ours that no other name aliases."""
    return _unsafe_problem(info) is None


def _unsafe_problem(info: os.stat_result) -> str | None:
    """What makes a lock file path unsafe (``it is a FIFO``), or None for a lock file we made.

    Only a regular file of ours with one name is: a lock on a hard-linked file is shared with
    a name outside the registry, and another user's file is not ours to trust.
    """
    kind = stat.S_IFMT(info.st_mode)
    if kind != stat.S_IFREG:
        return f"it is {_FILE_KINDS.get(kind, 'not a regular file')}"
    if info.st_uid != os.getuid():
        return f"its owner is uid {info.st_uid}, not you (uid {os.getuid()})"
    if info.st_nlink > 1:
        return f"it has {info.st_nlink} hard links (other names share its lock)"
    return None


_FILE_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _refuse_path(path: Path, error: OSError) -> RegistryError:
    """The error for a lock file path that ``open()`` refused: unsafe, or unusable.

    ``O_NOFOLLOW`` and the open mode turn a planted path into an errno (see
    :data:`_PLANTED_ERRNOS`); ``lstat`` says what it is.
    """
    if error.errno in _PLANTED_ERRNOS:
        try:
            problem = _unsafe_problem(os.lstat(path))
        except OSError:
            problem = None
        return UnsafeLeaseFile(path, problem or f"it cannot be opened ({error.strerror})")
    return registry_failure("open lease file", path, error)


def _open_lock(directory: Path, cpu: int) -> int | None:
    """Open (creating) one CPU's lock file safely: no symlinks, regular file, ours, one link.

    None when the scope collector removed the file or its folder meanwhile: try again.
    """
    path = directory / f"cpu-{cpu}.lock"
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except FileNotFoundError:
        _ensure_private_dir(directory)
        return None
    except OSError as error:
        raise _refuse_path(path, error) from None
    info = os.fstat(fd)
    if info.st_nlink == 0:
        os.close(fd)
        return None
    problem = _unsafe_problem(info)
    if problem:
        os.close(fd)
        raise UnsafeLeaseFile(path, problem)
    return fd


def _lock_one(directory: Path, cpu: int) -> int | None:
    """Lock one CPU's file: its open descriptor, or None while another lease holds it."""
    for _ in range(_RELOCK_ATTEMPTS):
        fd = _open_lock(directory, cpu)
        if fd is None:
            continue
        try:
            if not _platform.lock_exclusive(fd):
                os.close(fd)
                return None
            if os.fstat(fd).st_nlink > 0:
                return fd
        except OSError as error:
            os.close(fd)
            raise registry_failure("lock", directory / f"cpu-{cpu}.lock", error) from None
        # The scope collector unlinked the file between our open() and our flock(): a lock
        # on it would guard nothing, so lock the file now at that path instead.
        os.close(fd)
    return None  # fail closed: count the CPU as busy


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a record may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"{text} is out of range")
    return value


def parse_record(raw: bytes) -> dict | None:
    """Parse a JSON object another process wrote (maybe hostile); None if it is anything else.

    Infinity, NaN and out-of-range floats are refused (``int(inf)`` raises OverflowError),
    integers of thousands of digits raise ValueError, and deep nesting (``[[[[...``) raises
    RecursionError: all mean "unreadable", none escapes.
    """
    if len(raw) > RECORD_LIMIT:
        return None
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def is_pid(value: object) -> bool:
    """Whether a record's value can be a process id (an int, not a bool, in pid_t's range)."""
    return type(value) is int and 0 < value <= _PID_LIMIT


def is_timestamp(value: object) -> bool:
    """Whether a record's value can be a time in seconds since the epoch."""
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def _is_cpu_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= _CPU_LIMIT
        and all(type(cpu) is int and 0 <= cpu < _CPU_LIMIT for cpu in value)
    )


def _lease_from_record(data: dict, cpu: int, scope: str) -> LeaseInfo | None:
    """The lease a record describes, or None if a field is missing, odd or out of range."""
    cores, shared = data.get("cores"), data.get("shared", [])
    owner = data.get("owner")
    valid = (
        isinstance(data.get("lease_id"), str)
        and _LEASE_ID.fullmatch(data["lease_id"])
        and is_pid(data.get("pid"))
        and _is_cpu_list(cores)
        and cpu in cores  # a record in CPU 2's file that does not claim CPU 2 is not ours
        and _is_cpu_list(shared)
        and set(shared) <= set(cores)
        and isinstance(data.get("command"), str)
        and is_timestamp(data.get("since"))
        and (owner is None or is_pid(owner))
    )
    if not valid:
        return None
    return LeaseInfo(
        lease_id=data["lease_id"],
        pid=data["pid"],
        cores=frozenset(cores),
        command=data["command"],
        since=float(data["since"]),
        scope=scope,
        shared=frozenset(shared),
        owner=owner,
    )


def _unknown_holder(cpu: int, scope: str) -> LeaseInfo:
    return LeaseInfo(
        f"unknown-cpu-{cpu}", None, frozenset({cpu}), "(unreadable record)", None, scope
    )


def _read_record(fd: int, cpu: int, scope: str) -> LeaseInfo:
    """The lease recorded in a held lock file; an unknown holder if it cannot be trusted."""
    for attempt in range(3):
        if attempt:
            time.sleep(0.01)  # the holder may be writing its record right now
        info = None
        # One byte more than the limit allows, so that a larger record is seen as such.
        size = min(os.fstat(fd).st_size, RECORD_LIMIT) + 1
        data = parse_record(os.pread(fd, size, 0))
        if data is not None:
            info = _lease_from_record(data, cpu, scope)
        if info is not None:
            return info
    return _unknown_holder(cpu, scope)


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
            STATE.leases.pop(self.lease_id, None)
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
        _remove_idle_scope(self.info)

    def forget_inherited(self) -> None:
        """In a forked child: let go of the parent's lease without releasing it.

        The child shares the parent's lock descriptions; closing its copies keeps the
        parent's locks intact (no ``LOCK_UN``) and makes sure the child never holds them alone.
        """
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


#: Guards this process's table of held leases (``STATE.leases``).
_TABLE_LOCK = PinLock("lease table")


def held_leases() -> list[Lease]:
    """Leases held by this process."""
    with _TABLE_LOCK:
        return list(STATE.leases.values())


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
    All or nothing: a claim that fails holds none of the CPUs.
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
    lease = _hold(cores, fds, directory, scope=scope, shared=busy, command=command, owner=owner)
    _collect_after_claim(scope)
    return lease


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
                lease = _hold(
                    cores, fds, directory, scope=scope, shared=busy, command=None, owner=owner
                )
                _collect_after_claim(scope)
                return lease
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
    odd = {cpu for cpu in cores if not (isinstance(cpu, int) and 0 <= cpu < _CPU_LIMIT)}
    if odd:
        raise LeaseError(
            f"cannot lease CPUs {sorted(odd, key=str)}: CPU ids are integers from 0 to "
            f"{_CPU_LIMIT - 1}"
        )
    return cores


def _conflict(directory: Path, busy: frozenset[int], scope: str) -> LeaseConflict:
    holders = _holders(directory, busy, scope)
    return LeaseConflict(
        f"CPUs {format_cpu_list(busy)} are held by "
        + "; ".join(describe_holder(h) for h in holders)
        + ". Pick other CPUs, wait for those jobs, or allow sharing",
        busy,
        holders,
    )


def describe_holder(holder: LeaseInfo) -> str:
    """Who holds a lease, for messages: ``pid 12 (python job.py)``, or an unknown process."""
    if holder.pid is None:
        return (
            f"an unknown process (its record of CPU {format_cpu_list(holder.cores)} is "
            f"unreadable; `python -m pinbackend status` lists the lock files)"
        )
    return f"pid {holder.pid} ({holder.command})"


def _hold(
    cores: frozenset[int],
    fds: dict[int, int],
    directory: Path,
    *,
    scope: str,
    shared: frozenset[int],
    command: str | None,
    owner: int | None,
) -> Lease:
    """Record the lease in every lock file it holds and keep it in this process's table.

    A record that cannot be written (disk full, read-only) releases every lock taken so far:
    a claim holds all its CPUs or none.
    """
    info = LeaseInfo(
        lease_id=uuid.uuid4().hex[:12],
        pid=os.getpid(),
        cores=cores,
        command=(command if command is not None else _own_command())[:_COMMAND_LIMIT],
        since=time.time(),
        scope=scope,
        shared=shared,
        owner=owner,
    )
    record = json.dumps(info.to_dict()).encode()
    try:
        for cpu, fd in fds.items():
            try:
                _write_record(fd, record)
            except OSError as error:
                path = directory / f"cpu-{cpu}.lock"
                raise registry_failure("write the lease record into", path, error) from None
    except BaseException:
        _close_all(fds)
        raise
    lease = Lease(info, fds)
    with _TABLE_LOCK:
        STATE.leases[info.lease_id] = lease
    return lease


def _write_record(fd: int, record: bytes) -> None:
    os.ftruncate(fd, 0)
    if os.pwrite(fd, record, 0) != len(record):
        # A short write on a nearly full disk: the record would read back as corrupt.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _try_lock_all(directory: Path, cores: frozenset[int]) -> tuple[dict[int, int], frozenset]:
    fds: dict[int, int] = {}
    busy = set()
    try:
        for cpu in sorted(cores):
            fd = _lock_one(directory, cpu)
            if fd is None:
                busy.add(cpu)
            else:
                fds[cpu] = fd
    except BaseException:
        _close_all(fds)
        raise
    return fds, frozenset(busy)


def _close_all(fds: dict[int, int] | list[int]) -> None:
    for fd in fds.values() if isinstance(fds, dict) else fds:
        os.close(fd)


def _own_command() -> str:
    return " ".join(sys.argv) or sys.executable


def _holder_of(directory: Path, cpu: int, scope: str) -> LeaseInfo | None:
    """Who holds one CPU's lock: None if nobody; an unknown holder if its record is untrusted.

    Fails closed two ways. A held lock whose record does not check out (a live process wrote
    garbage, or is writing right now) makes the CPU busy, held by an unknown process. A path
    no claim could lock (a symlink, FIFO, directory, another user's or a hard-linked file)
    raises :class:`UnsafeLeaseFile` at once: waiting cannot help, and planning around it
    would hide it.
    """
    path = directory / f"cpu-{cpu}.lock"
    try:
        fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _refuse_path(path, error) from None
    try:
        info = os.fstat(fd)
        if info.st_nlink == 0:
            return None  # the scope collector removed it after we opened it
        problem = _unsafe_problem(info)
        if problem:
            raise UnsafeLeaseFile(path, problem)
        if not _platform.probe_lock(fd):
            return None
        return _read_record(fd, cpu, scope)
    except OSError:
        return _unknown_holder(cpu, scope)
    finally:
        os.close(fd)


def _holders(
    directory: Path,
    cpus: Iterable[int],
    scope: str,
    problems: list[RegistryError] | None = None,
) -> list[LeaseInfo]:
    found: dict[str, LeaseInfo] = {}
    for cpu in sorted(cpus):
        try:
            info = _holder_of(directory, cpu, scope)
        except RegistryError as error:
            if problems is None:
                raise
            problems.append(error)
            continue
        if info is not None:
            found.setdefault(info.lease_id, info)
    return list(found.values())


def list_leases(
    scope: str | None = "", *, problems: list[RegistryError] | None = None
) -> list[LeaseInfo]:
    """Return the live leases in a scope, oldest first.

    ``""`` is the host scope (top-level leases); a lease id is the scope of the pools nested
    inside that lease; ``None`` lists every scope, and removes the scope folders of leases
    that ended without :meth:`Lease.release` (killed, or handed to a program by ``exec``).

    A lock file that cannot be trusted (:class:`UnsafeLeaseFile`) or opened raises, unless
    ``problems`` is given: then each such error is appended to it and the listing goes on
    (``status`` shows them beside the leases).
    """
    if scope is not None:
        return _leases_in(scope, problems)
    # Folders first, leases second: a parent lease held when its folder was listed is then
    # among the leases read (see _remove_stale_scopes).
    names = _scope_names()
    leases = [info for name in ["", *names] for info in _leases_in(name, problems)]
    _remove_stale_scopes(names, leases)
    return leases


def _leases_in(scope: str, problems: list[RegistryError] | None = None) -> list[LeaseInfo]:
    directory = _scope_dir(scope, create=False)
    try:
        entries = os.listdir(directory) if directory is not None else []
    except FileNotFoundError:
        entries = []  # collected meanwhile
    except OSError as error:
        raise registry_failure("list the lease directory", directory, error) from None
    cpus = [int(match[1]) for match in map(_LOCK_NAME.fullmatch, entries) if match]
    leases = _holders(directory, cpus, scope, problems) if cpus else []
    return sorted(leases, key=lambda info: (info.since or 0.0, info.lease_id))


def _scope_names() -> list[str]:
    """The lease ids that have a scope folder in the registry."""
    with os.scandir(registry_dir()) as entries:
        return sorted(
            entry.name.removeprefix("scope-")
            for entry in entries
            if entry.name.startswith("scope-")
            and _LEASE_ID.fullmatch(entry.name.removeprefix("scope-"))
            and entry.is_dir(follow_symlinks=False)
        )


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


# Scope folders. A nested pool's folder is live while its parent lease is held. One that
# outlived its parent (the parent was killed, or ended with the program it handed its
# descriptors to) is removed by the next process that lists every scope or claims at the top.


def _remove_stale_scopes(names: Iterable[str], leases: Iterable[LeaseInfo]) -> None:
    """Remove the scope folders in ``names`` whose parent lease is not among ``leases``.

    Lease ids are never reused, so a parent found free stays free; nested leases that an
    orphan still holds keep their folder (see :func:`_remove_scope_folder`).
    """
    held = {info.lease_id for info in leases}
    for name in names:
        if name not in held:
            _remove_scope_folder(name)


def _collect_after_claim(scope: str) -> None:
    """After a top-level claim: collect stale scope folders, if there are any (best effort)."""
    if scope:
        return
    with contextlib.suppress(LeaseError, OSError):
        names = _scope_names()
        if names:
            leases = [info for name in ["", *names] for info in _leases_in(name)]
            _remove_stale_scopes(names, leases)


def _remove_idle_scope(info: LeaseInfo) -> None:
    """After a release: remove the lease's scope folder unless the lease lives on elsewhere.

    A descriptor passed to a child keeps the lock (and the child's nested pools) alive.
    """
    with contextlib.suppress(LeaseError, OSError):
        if not os.path.lexists(registry_dir() / f"scope-{info.lease_id}"):
            return
        directory = _scope_dir(info.scope, create=False)
        held = info.cores - info.shared
        if directory is not None and held:
            holder = _holder_of(directory, min(held), info.scope)
            if holder is not None and holder.lease_id == info.lease_id:
                return
        _remove_scope_folder(info.lease_id)


def _remove_scope_folder(lease_id: str) -> None:
    """Remove a scope folder whose leases are all free; leave it if anything is in the way.

    Its lock files are unlinked only while we hold every one of their locks. A claim that
    opened one before the unlink finds it locked (busy: it tries again) or, once we let go,
    unlinked (:func:`_lock_one` then opens the new file at that path): nobody ends up holding
    a lock file that is no longer in the registry.
    """
    fds: list[int] = []
    try:
        folder = registry_dir() / f"scope-{lease_id}"
        if not _check_private_dir(folder):
            return
        names = os.listdir(folder)
        for name in names:
            if not _LOCK_NAME.fullmatch(name):
                return  # not something we made: leave the folder alone
            fds.append(os.open(folder / name, os.O_RDWR | _platform.SAFE_OPEN_FLAGS))
            if not _is_lock_file(os.fstat(fds[-1])) or not _platform.lock_exclusive(fds[-1]):
                return  # held by a live (orphaned) nested lease, or not a lock file
        for name in names:
            os.unlink(folder / name)
        os.rmdir(folder)  # fails, harmlessly, if a claim created a file meanwhile
    except (LeaseError, OSError):
        return  # changed or removed meanwhile: a later pass tries again
    finally:
        _close_all(fds)
