"""Who holds a flock, as the kernel says: Linux's ``/proc/locks``, readable by every user.

Two things make one read of it an unreliable answer:

- **It is read in pieces.** ``/proc/locks`` lists every lock of the host (every container's
  too) and a read returns it a page at a time; a lock released between two pieces shifts the
  rest, and a line can be skipped. A lock that ``flock`` shows held but no read lists is
  read again, a few times, while it stays held.
- **Some file systems show another device** (btrfs subvolumes, overlayfs) there than
  ``stat`` does. Then the inode alone decides where one lock has it, and where several do
  (the host's other file systems), the device the kernel shows for the folder is learnt by
  locking the folder itself for a moment (a shared lock, which blocks nobody).
"""

from __future__ import annotations

import os
import time

from .. import _platform

__all__ = ["LockHolders", "flock_holders", "holder_pid"]

#: How many times a lock ``flock`` shows held is looked up in ``/proc/locks``.
READS = 4

Holders = dict[tuple[int, int, int], int]


def flock_holders() -> Holders:
    """Who holds each exclusive flock on this host: ``{(major, minor, inode): pid}``
    (empty where there is no ``/proc/locks``)."""
    return {key: pid for key, pid, kind in _platform.host_flocks() if kind == "WRITE"}


def holder_pid(holders: Holders, info: os.stat_result, device: tuple | None = None) -> int | None:
    """The pid ``holders`` names for the file ``info`` describes, if one is certain: its
    device and inode, else its inode alone where one lock has it, else its inode on
    ``device`` (the device ``/proc/locks`` shows for the file's file system)."""
    key = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    if key in holders:
        return holders[key]
    same = {(major, minor): pid for (major, minor, ino), pid in holders.items() if ino == key[2]}
    if len(same) == 1:
        return next(iter(same.values()))
    return same.get(device) if device is not None else None


class LockHolders:
    """The holders of the lock files of one folder, read from ``/proc/locks`` at most once
    per lookup that needs it (see the module docstring for the retries)."""

    def __init__(self, folder: os.PathLike | str) -> None:
        self._folder = folder
        self._holders: Holders | None = None
        self._device: tuple | None = None

    def holder(self, fd: int) -> tuple[bool, int | None]:
        """Whether another process holds the lock on ``fd``'s file and which pid it is
        (None where the kernel does not say)."""
        info = os.fstat(fd)
        for attempt in range(READS):
            if not _platform.probe_lock(fd):
                return False, None  # free, or released since the last look
            if attempt or self._holders is None:
                self._holders = flock_holders()
            pid = holder_pid(self._holders, info, self._device)
            if pid is None and self._device is None and self._ambiguous(info):
                self._device = self._folder_device()
                pid = holder_pid(self._holders, info, self._device)
            if pid is not None:
                return True, pid
            time.sleep(0.001 * attempt)
        return True, None

    def _ambiguous(self, info: os.stat_result) -> bool:
        return sum(inode == info.st_ino for _, _, inode in self._holders) > 1

    def _folder_device(self) -> tuple | None:
        """The device ``/proc/locks`` shows for the folder's file system, from a shared lock
        this process takes on the folder for the time of one read."""
        try:
            fd = os.open(self._folder, os.O_RDONLY | _platform.SAFE_OPEN_FLAGS)
        except OSError:
            return None
        try:
            inode = os.fstat(fd).st_ino
            if not _platform.share_lock(fd):
                return None
            mine = os.getpid()
            locks = _platform.host_flocks()
            found = {key[:2] for key, pid, _ in locks if pid == mine and key[2] == inode}
            return found.pop() if len(found) == 1 else None
        finally:
            os.close(fd)  # drops the lock too
