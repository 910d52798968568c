"""Setting up the host registry (``python -m pinbackend host init``, run as root).

One command, no daemon: it makes the folder (root-owned, sticky) and one root-owned,
read-only lock file per possible CPU of the host, and repairs what it finds there (modes,
owners, files a user planted). Running it again is harmless. Layout: :mod:`.hostreg`.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import _platform
from .host_wants import HOST_WANTS_FOLDER
from .hostreg import dir_problem, host_registry_problem, possible_cpus
from .registry import RegistryError, lock_path

__all__ = ["InitResult", "init_host_registry", "possible_cpus"]

_LOCK_MODE = 0o444
#: Every user may make their record folder; the sticky bit keeps each user's entries (and
#: root's lock files) theirs: nobody else can remove or rename them.
_OPEN_MODE = 0o1777
#: With a group: only its members may enter (and make their folders), still sticky.
_GROUP_MODE = 0o1770


@dataclass(frozen=True)
class InitResult:
    """What ``host init`` made: the folder, its group id and mode, the CPUs with a lock file,
    and the planted entries it replaced."""

    path: Path
    gid: int
    mode: int
    cpus: frozenset[int]
    replaced: tuple[str, ...]


def init_host_registry(path: Path, gid: int | None = None) -> InitResult:
    """Make (or repair) the host registry at ``path``; raise :class:`RegistryError` with
    one line where it cannot be made safe. Needs root."""
    if os.geteuid() != 0:
        raise RegistryError(
            f"host init must run as root: the registry {path} must belong to root so that no "
            f"user can tamper with it; run `sudo python -m pinbackend host init`"
        )
    if not path.is_absolute():
        raise RegistryError(f"the host registry path {path} is relative; give an absolute path")
    _check_parents(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != 0:
        owner = f"belongs to uid {info.st_uid}" if info.st_uid else "is not a directory"
        raise RegistryError(
            f"{path} exists and {owner} (planted by a user?); look at it, remove it "
            f"(rm -r {path}) and run host init again"
        )
    group = 0 if gid is None else gid
    mode = _OPEN_MODE if gid is None else _GROUP_MODE
    # Not a symlink (checked above), in folders only root may change (checked before).
    os.chown(path, 0, group)
    os.chmod(path, mode)
    problem = host_registry_problem(path)
    if problem:
        raise RegistryError(problem)
    cpus = possible_cpus()
    replaced = tuple(name for cpu in sorted(cpus) if (name := _make_lock(path, cpu, group)))
    wants = _make_wants_folder(path, group, mode)
    return InitResult(path, group, mode, cpus, replaced + ((wants,) if wants else ()))


def _check_parents(path: Path) -> None:
    """Refuse a place under a folder a user could change (the registry could be swapped)."""
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    resolved = above.resolve()
    for parent in [*reversed(resolved.parents), resolved]:
        problem = dir_problem(os.stat(parent))
        if problem:
            raise RegistryError(
                f"refusing to make the host registry {path}: the folder above it, {parent}, "
                f"{problem}; pick a place under root's folders only (the default is "
                f"/var/lib/pinbackend)"
            )
    with contextlib.suppress(FileExistsError):
        os.makedirs(path.parent, 0o755)


def _make_lock(path: Path, cpu: int, gid: int) -> str | None:
    """Make one CPU's lock file root's and read-only; return its name if something else
    (a user's file, a symlink, a folder) was there and was removed."""
    lock = lock_path(path, cpu)
    replaced = None
    try:
        info = os.lstat(lock)
    except FileNotFoundError:
        info = None
    if info is not None and (not stat.S_ISREG(info.st_mode) or info.st_uid != 0):
        replaced = lock.name
        if stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode):
            _remove_tree(lock)
        else:
            os.unlink(lock)
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT | _platform.SAFE_OPEN_FLAGS, _LOCK_MODE)
    try:
        os.fchown(fd, 0, gid)
        os.fchmod(fd, _LOCK_MODE)
    finally:
        os.close(fd)
    return replaced


def _make_wants_folder(path: Path, gid: int, mode: int) -> str | None:
    """Make the folder of every user's share wants (:mod:`.host_wants`) root's, with the
    registry's own mode (sticky); return its name if something a user planted was there."""
    folder = path / HOST_WANTS_FOLDER
    replaced = None
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(folder)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != 0:
            replaced = folder.name
            if stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode):
                _remove_tree(folder)
            else:
                os.unlink(folder)
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    # Opened without following a link and checked on the open folder: a user who made one
    # there between the check above and mkdir gets nothing of root's.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _platform.SAFE_OPEN_FLAGS)
    try:
        if os.fstat(fd).st_uid != 0:
            raise RegistryError(
                f"{folder} was made by uid {os.fstat(fd).st_uid} while host init ran; run "
                f"host init again (it replaces it)"
            )
        os.fchown(fd, 0, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return replaced


def _remove_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            entry = os.path.join(root, name)
            os.unlink(entry) if os.path.islink(entry) else os.rmdir(entry)
    os.rmdir(folder)
