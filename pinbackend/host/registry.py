"""The lease registry: one private folder per user, where leases, jobs and notices keep files.

(The host registry every user shares, where an admin set one up, is :mod:`.hostreg`; this
folder keeps each user's own records there too: commands, nested scopes, jobs.)

Every process of a user finds the same folder (:func:`registry_dir`) and uses it only while
it is a directory of theirs that nobody else may enter. Its files are opened so that nothing
planted there is followed or trusted: a symlink, FIFO, directory, hard-linked or foreign-owned
file is refused at once with :class:`UnsafeLeaseFile` (:func:`open_file`,
:func:`open_existing`). The records in them were written by other processes (another
version, a bug, something hostile): :func:`parse_record` and the field checks read them
without trusting them (each kind of record checks its own fields where it is defined). An
OS error becomes one line naming what failed where, why, and the remedy
(:func:`registry_failure`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import sys
from pathlib import Path

from .. import _platform
from .._docs import troubleshooting

__all__ = [
    "CPU_LIMIT",
    "LEASE_ID",
    "LOCK_NAME",
    "RECORD_LIMIT",
    "REGISTRY_ENV",
    "SHARE_NAME",
    "LeaseError",
    "RegistryError",
    "UnsafeLeaseFile",
    "is_cpu_list",
    "is_lock_file",
    "is_pid",
    "is_private_dir",
    "is_timestamp",
    "lock_path",
    "open_existing",
    "open_file",
    "parse_record",
    "private_dir",
    "read_record",
    "registry_dir",
    "registry_failure",
    "scope_dir",
    "scope_names",
    "write_record",
]

#: Environment variable that overrides where the registry lives (an absolute path).
REGISTRY_ENV = "PINBACKEND_RUNTIME_DIR"
#: Where the registry lives when the variable is unset: one fixed folder per user. Session
#: variables (``XDG_RUNTIME_DIR``, ``TMPDIR``) differ between an ssh login, a cron job and a
#: batch job of one user; a registry that followed them would split the host into registries
#: that cannot see each other's locks, and two jobs would both get CPU 0.
_DEFAULT_PARENT = Path("/tmp")
#: Bounds on what a record read back from a lock or job file may be. A record holds whatever
#: the process that wrote it put there (another version, a bug, something hostile): readers
#: check every field instead of trusting it, and never parse more than this.
RECORD_LIMIT = 1 << 20
CPU_LIMIT = 1 << 16
_PID_LIMIT = (1 << 31) - 1
#: A lease id, which also names the scope folder of the pools nested in that lease.
LEASE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
LOCK_NAME = re.compile(r"cpu-(0|[1-9][0-9]{0,4})\.lock")
#: The record of a lease that holds no CPU's lock (every CPU shared), locked by its holder.
SHARE_NAME = re.compile(r"share-[0-9A-Za-z_-]{1,64}\.lock")
#: How often a folder that the scope collector removed under us is made again.
_RECREATE_ATTEMPTS = 10
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | _platform.SAFE_OPEN_FLAGS
#: ``open()`` failures that mean "this path is not a file we made": a symlink (ELOOP on
#: Linux, EMLINK on the BSDs with O_NOFOLLOW), a FIFO or socket, a directory.
_PLANTED_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR, errno.ENOTDIR})
_REMEDIES = {
    getattr(errno, "EDQUOT", None): "your disk quota is used up: free space",
    errno.ENOSPC: "the file system is full: free space on it",
    errno.EROFS: "the file system is read-only: make it writable",
    errno.EACCES: "make it writable by you (check its owner and mode)",
    errno.EPERM: "make it writable by you (check its owner, mode and attributes)",
}
_FILE_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
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


def registry_failure(action: str, path: Path | str, error: OSError) -> RegistryError:
    """One line for an OS error in the registry: what failed where, why, and what to do."""
    remedy = _REMEDIES.get(error.errno, "fix that")
    return RegistryError(
        f"cannot {action} {path}: {error.strerror or error}; {remedy}, or set {REGISTRY_ENV} "
        f"to a private directory elsewhere. See {troubleshooting('lease-registry-unusable')}"
    )


# --- where: the registry folder, scope folders, lock file names -----------------------------


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
    private_dir(path)
    return path


def private_dir(path: Path) -> Path:
    """Make ``path`` a private directory of ours (mode 0700) unless it is one; return it."""
    for _ in range(_RECREATE_ATTEMPTS):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise registry_failure("create the lease directory", path, error) from None
        if is_private_dir(path):
            return path
        # A scope folder the collector removed between our mkdir and our look: make it again.
    raise RegistryError(f"the lease directory {path} keeps disappearing; is something removing it?")


def is_private_dir(path: Path) -> bool:
    """Check that ``path`` is a private directory of ours; False if it does not exist.

    Anything else there (a symlink, a file, another user's or an open directory) raises
    :class:`RegistryError`.
    """
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


def scope_dir(scope: str, *, create: bool = True) -> Path | None:
    """The folder of a scope (the registry itself for ``""``); None if missing and not created."""
    base = registry_dir()
    if not scope:
        return base
    if not LEASE_ID.fullmatch(scope):
        # Scopes come from PINBACKEND_SCOPE: never let one name a path outside the registry.
        raise LeaseError(
            f"lease scope {scope!r} is not a lease id (letters, digits, '-', '_'); "
            f"unset PINBACKEND_SCOPE or set it to the id of a live lease"
        )
    path = base / f"scope-{scope}"
    if create:
        private_dir(path)
    elif not is_private_dir(path):
        return None
    return path


def scope_names() -> list[str]:
    """The lease ids that have a scope folder in the registry."""
    with os.scandir(registry_dir()) as entries:
        return sorted(
            entry.name.removeprefix("scope-")
            for entry in entries
            if entry.name.startswith("scope-")
            and LEASE_ID.fullmatch(entry.name.removeprefix("scope-"))
            and entry.is_dir(follow_symlinks=False)
        )


def lock_path(directory: Path, cpu: int) -> Path:
    """The lock file of one CPU in a scope's folder."""
    return directory / f"cpu-{cpu}.lock"


# --- opening files safely ---------------------------------------------------------------------


def unsafe_problem(info: os.stat_result) -> str | None:
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


def is_lock_file(info: os.stat_result) -> bool:
    """A lock file we made: a regular file of ours that no other name aliases."""
    return unsafe_problem(info) is None


def _refuse_path(path: Path, error: OSError) -> RegistryError:
    """The error for a path that ``open()`` refused: unsafe, or unusable.

    ``O_NOFOLLOW`` and the open mode turn a planted path into an errno (see
    :data:`_PLANTED_ERRNOS`); ``lstat`` says what it is.
    """
    if error.errno in _PLANTED_ERRNOS:
        try:
            problem = unsafe_problem(os.lstat(path))
        except OSError:
            problem = None
        return UnsafeLeaseFile(path, problem or f"it cannot be opened ({error.strerror})")
    return registry_failure("open lease file", path, error)


def _checked(fd: int, path: Path) -> int | None:
    """``fd`` if it is a file we made that still has its name; None if it was unlinked."""
    try:
        info = os.fstat(fd)
        if info.st_nlink == 0:
            os.close(fd)
            return None
        problem = unsafe_problem(info)
    except BaseException:
        os.close(fd)
        raise
    if problem:
        os.close(fd)
        raise UnsafeLeaseFile(path, problem)
    return fd


def open_file(path: Path) -> int | None:
    """Open (creating, mode 0600) a file of the registry for reading and writing, safely.

    No symlink is followed, and only a regular file of ours with one name is opened;
    anything else raises :class:`UnsafeLeaseFile`, an OS error :class:`RegistryError`.
    None when the scope collector removed the file or its folder meanwhile: try again.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except FileNotFoundError:
        private_dir(path.parent)
        return None
    except OSError as error:
        raise _refuse_path(path, error) from None
    return _checked(fd, path)


def open_existing(path: Path) -> int | None:
    """Open a file of the registry read-only, as safely as :func:`open_file`; None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _refuse_path(path, error) from None
    return _checked(fd, path)


# --- records ------------------------------------------------------------------------------------


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


def read_record(fd: int) -> dict | None:
    """The record in an open file, parsed by :func:`parse_record` (None if it is none)."""
    # One byte more than the limit allows, so that a larger record is seen as such.
    return parse_record(os.pread(fd, min(os.fstat(fd).st_size, RECORD_LIMIT) + 1, 0))


def write_record(fd: int, record: bytes) -> None:
    """Replace the record in an open file (OSError if it cannot be written whole).

    Written first, then cut to its length: ext4 flushes a file truncated to zero and
    rewritten when it is closed (``auto_da_alloc``), 4 ms per lock file here against 8 µs.
    A reader meanwhile may see the new record with the old one's tail: unreadable, as an
    emptied file was, and read again.
    """
    if os.pwrite(fd, record, 0) != len(record):
        # A short write on a nearly full disk: the record would read back as corrupt.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.ftruncate(fd, len(record))


def is_pid(value: object) -> bool:
    """Whether a record's value can be a process id (an int, not a bool, in pid_t's range)."""
    return type(value) is int and 0 < value <= _PID_LIMIT


def is_timestamp(value: object) -> bool:
    """Whether a record's value can be a time in seconds since the epoch."""
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def is_cpu_list(value: object) -> bool:
    """Whether a record's value can be a list of CPU ids."""
    return (
        isinstance(value, list)
        and len(value) <= CPU_LIMIT
        and all(type(cpu) is int and 0 <= cpu < CPU_LIMIT for cpu in value)
    )
