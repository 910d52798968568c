"""The host registry: one root-owned folder through which every user's pinbackend claims CPUs.

Opt-in: ``python -m pinbackend host init``, run as root, makes it (:mod:`.hostinit`). Without
it, each user's jobs claim in their own per-user registry (:mod:`.registry`) and see other
users only through the processes' affinity (:mod:`.foreign`). Its layout::

    DIR/                  root, mode 1777 (root:GROUP 1770 with --group): sticky, so no
                          user can remove or rename an entry another user (or root) made
    DIR/cpu-N.lock        root, mode 0444: the one flock per CPU every user takes (opened
                          read-only: nobody can write it, only lock it)
    DIR/user-UID/         made by that user at their first claim, mode 0755
    DIR/user-UID/cpu-N.json   mode 0644: that user's public record of the lease on CPU N
                          (lease id, pid, cores, since, shared, pool owner; no command)

Who holds a CPU comes from the kernel, never from a record: the flock on ``cpu-N.lock`` is
held by a process that ``/proc/locks`` names, and ``/proc/PID`` says whose it is. A record
adds the lease's id, cores and age only when it lies in that user's own folder (owned by
them, writable by nobody else) and names that very pid; anything else is not trusted. A
user's private records (commands, nested scopes, jobs) stay in their per-user registry.

Every claim checks the folder: one that is not a real directory owned by root, is writable
by others without the sticky bit, or lies under such a folder, is refused with one line
(what, why, the remedy) and the process falls back to its per-user registry.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import _platform
from ..core.cpuset import parse_cpu_list
from .notices import PinbackendWarning, warn
from .registry import (
    LEASE_ID,
    RECORD_LIMIT,
    RegistryError,
    UnsafeLeaseFile,
    is_cpu_list,
    is_pid,
    is_timestamp,
    lock_path,
    parse_record,
    registry_dir,
    registry_failure,
    write_record,
)
from .state import STATE

__all__ = [
    "DEFAULT_HOST_REGISTRY",
    "HOST_REGISTRY_ENV",
    "HostRegistry",
    "HostRegistryRefused",
    "dir_problem",
    "find_host_registry",
    "folder_problem",
    "host_registry_path",
    "host_registry_problem",
    "possible_cpus",
    "registry_in_use",
]

#: Environment variable that puts the host registry elsewhere (an absolute path).
HOST_REGISTRY_ENV = "PINBACKEND_HOST_REGISTRY"
#: Where every user's pinbackend looks for it when the variable is unset. /var/lib, not /run:
#: /run is emptied at every boot, and the root-owned lock files would be gone until root ran
#: ``host init`` again (users would silently claim in their own registries meanwhile). The
#: kernel drops every flock at reboot, so nothing stale there is ever trusted.
DEFAULT_HOST_REGISTRY = Path("/var/lib/pinbackend")
#: Set once a process warned that the host registry is refused: its children do not repeat it.
_REFUSED_ENV = "_PINBACKEND_HOST_REGISTRY_REFUSED"
_RECORD_MODE = 0o644
_FOLDER_MODE = 0o755


class HostRegistryRefused(PinbackendWarning):
    """The host registry's folder is unsafe (planted?): this process claims in its own."""

    anchor = "host-registry-refused"


@dataclass(frozen=True)
class HostRegistry:
    """A checked host registry folder (see the module docstring for its layout)."""

    path: Path

    def lock_file(self, cpu: int) -> Path:
        """The root-owned lock file of one CPU."""
        return lock_path(self.path, cpu)

    def user_folder(self, uid: int) -> Path:
        """The folder of a user's public records."""
        return self.path / f"user-{uid}"

    def lock_cpus(self) -> list[int]:
        """The CPUs that have a lock file here. Looked up one by one, never by listing the
        folder: any user may fill it with files."""
        return [cpu for cpu in sorted(possible_cpus()) if os.path.lexists(self.lock_file(cpu))]

    def open_lock(self, cpu: int) -> int:
        """Open one CPU's lock file read-only (a flock needs no more), refusing what root did
        not make: a symlink, a non-regular file, a file of a user or writable by others."""
        path = self.lock_file(cpu)
        try:
            fd = os.open(path, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
        except FileNotFoundError:
            raise RegistryError(
                f"the host registry {self.path} has no lock file for CPU {cpu}; run "
                f"`python -m pinbackend host init` again as root (it makes one per CPU)"
            ) from None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EMLINK):
                raise UnsafeLeaseFile(path, "it is a symbolic link") from None
            raise registry_failure("open the host lock file", path, error) from None
        info = os.fstat(fd)
        problem = root_file_problem(info)
        if problem:
            os.close(fd)
            raise UnsafeLeaseFile(path, problem)
        return fd

    def write_record(self, cpu: int, record: bytes) -> bool:
        """Write this user's public record of the lease on ``cpu``; False where it cannot be
        (a folder another user planted under this user's name, a full disk): the lease is
        held all the same, shown without its age."""
        folder = self.user_folder(os.geteuid())
        with contextlib.suppress(FileExistsError, OSError):
            os.mkdir(folder, _FOLDER_MODE)
        try:
            if folder_problem(os.lstat(folder), os.geteuid()):
                return False
            fd = os.open(
                folder / f"cpu-{cpu}.json",
                os.O_WRONLY | os.O_CREAT | _platform.SAFE_OPEN_FLAGS,
                _RECORD_MODE,
            )
        except OSError:
            return False  # a symlink planted there (ELOOP) is never written through
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink > 1:
                return False
            write_record(fd, record)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def read_record(self, uid: int, cpu: int) -> dict | None:
        """A user's public record of CPU ``cpu``, if it lies where only that user can write."""
        folder = self.user_folder(uid)
        try:
            if folder_problem(os.lstat(folder), uid):
                return None
            fd = os.open(folder / f"cpu-{cpu}.json", os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
                return None
            return parse_record(os.pread(fd, min(info.st_size, RECORD_LIMIT) + 1, 0))
        except OSError:
            return None
        finally:
            os.close(fd)


def possible_cpus() -> frozenset[int]:
    """Every CPU id this host may ever bring online (hot-plug included), so that no CPU is
    ever without a lock file; the CPUs counted now where the kernel does not say."""
    with contextlib.suppress(OSError, ValueError), open("/sys/devices/system/cpu/possible") as f:
        return parse_cpu_list(f.read().strip())
    return frozenset(range(os.cpu_count() or 1))


def root_file_problem(info: os.stat_result) -> str | None:
    """Why a host lock file is not one root made (None if it is). Its other names (hard
    links) do not matter: whoever locks it through one holds the same lock."""
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_uid != 0:
        return f"its owner is uid {info.st_uid}, not root (planted by a user?)"
    if info.st_mode & 0o022:
        return f"it has mode {stat.S_IMODE(info.st_mode):04o}; others could write it"
    return None


def folder_problem(info: os.stat_result, uid: int) -> str | None:
    """Why a user's record folder cannot be trusted as ``uid``'s (None if it can)."""
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory"
    if info.st_uid != uid:
        return f"it belongs to uid {info.st_uid}"
    if info.st_mode & 0o022:
        return f"it has mode {stat.S_IMODE(info.st_mode):04o}; others could write in it"
    return None


def dir_problem(info: os.stat_result) -> str | None:
    """Why a folder on the way to the host registry, or the registry itself, is unsafe."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != 0:
        return f"is owned by uid {info.st_uid}, not by root"
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        mode = stat.S_IMODE(info.st_mode)
        return f"has mode {mode:04o}: writable by others without the sticky bit"
    return None


def host_registry_problem(path: Path) -> str | None:
    """Why ``path`` cannot be the host registry, as one line; None if it is safe.

    The folder itself and every folder above it must be root's, and writable by others only
    with the sticky bit: otherwise a user could replace or rename it. A symbolic link on the
    way must be root's too (a user could point theirs elsewhere).
    """
    try:
        problem = dir_problem(os.lstat(path))
        where = path
        for link in [*reversed(path.parents[:-1])] if problem is None else []:
            info = os.lstat(link)
            if stat.S_ISLNK(info.st_mode) and info.st_uid != 0:
                where, problem = link, f"is a symbolic link of uid {info.st_uid}"
                break
        if problem is None:
            above = path.parent.resolve(strict=True)
            for parent in [*reversed(above.parents), above]:
                where = parent
                problem = dir_problem(os.stat(parent))
                if problem:
                    break
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    if problem is None:
        return None
    subject = f"the folder above it, {where}," if where != path else "it"
    return (
        f"refusing the host registry {path}: {subject} {problem}, so a user could replace "
        f"it or its files (planted?); as root, remove it and run `python -m pinbackend host "
        f"init`, or point {HOST_REGISTRY_ENV} at the one root made"
    )


def host_registry_path() -> Path:
    """Where this process looks for the host registry: the variable, else the default."""
    value = os.environ.get(HOST_REGISTRY_ENV, "")
    if not value:
        return DEFAULT_HOST_REGISTRY
    if not os.path.isabs(value):
        raise RegistryError(
            f"{HOST_REGISTRY_ENV}={value!r} is relative; it must be an absolute path (e.g. "
            f"{DEFAULT_HOST_REGISTRY}), the same for every user"
        )
    return Path(value)


def _lookup() -> tuple[HostRegistry | None, str]:
    """The host registry this process claims through, or None and why not."""
    path = host_registry_path()
    if not os.path.lexists(path):
        return None, f"no host registry at {path}"
    problem = host_registry_problem(path)
    if problem:
        return None, problem
    if not os.access(path, os.R_OK | os.X_OK):
        # root:GROUP 1770: the admin let only GROUP's members in.
        return None, f"the host registry {path} is not open to you (its group's members only)"
    return HostRegistry(path), ""


def find_host_registry() -> HostRegistry | None:
    """The host registry, checked now; None to claim in the per-user registry.

    An unsafe folder is refused with a warning, once per process and folder, and not again
    in the processes it starts (pool workers): one line per job, not one per worker.
    """
    registry, why = _lookup()
    if registry is None and why.startswith("refusing") and STATE.warn_once(f"host:{why}"):
        path = str(host_registry_path())
        if os.environ.get(_REFUSED_ENV) != path:
            os.environ[_REFUSED_ENV] = path
            warn(HostRegistryRefused, f"{why}; using your per-user registry meanwhile")
    return registry


def registry_in_use() -> dict:
    """Which registry claims go through: ``{"kind": "host"|"user", "path", "private",
    "note"}`` (``private``: this user's own registry, for commands, scopes and jobs)."""
    registry, why = _lookup()
    private = str(registry_dir())
    if registry is not None:
        return {"kind": "host", "path": str(registry.path), "private": private, "note": ""}
    return {"kind": "user", "path": private, "private": private, "note": why}


def trusted_record(data: dict | None, cpu: int, pid: int, uid: int) -> dict | None:
    """A public record's fields, if it checks out for the holder the kernel named: the
    lease's pid (never another user's process), its cores (CPU ``cpu`` among them)."""
    if data is None:
        return None
    cores, shared, owner = data.get("cores"), data.get("shared", []), data.get("owner")
    valid = (
        data.get("pid") == pid
        and isinstance(data.get("lease_id"), str)
        and LEASE_ID.fullmatch(data["lease_id"])
        and is_cpu_list(cores)
        and cpu in cores
        and is_cpu_list(shared)
        and set(shared) <= set(cores)
        and is_timestamp(data.get("since"))
    )
    if not valid:
        return None
    # A pool owner of another user would make that user count this lease as their own.
    if not (is_pid(owner) and _platform.process_uid(owner) == uid):
        owner = None
    return {**data, "owner": owner}
