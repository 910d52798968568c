"""Who holds a flock, read from the kernel (pinbackend/host/kernel_locks.py): real locks held
by real processes, and the lookup's rules on made-up /proc/locks contents."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pinbackend import _platform
from pinbackend.host.kernel_locks import LockHolders, flock_holders, holder_pid

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def held_file(tmp_path):
    """A file another process holds an exclusive flock on: (path, that process)."""
    path = tmp_path / "cpu-0.lock"
    path.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield path, holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_held_lock_is_named_with_its_holders_pid_and_a_free_one_is_free(held_file, tmp_path):
    path, holder = held_file
    free = tmp_path / "cpu-1.lock"
    free.write_text("")
    holders = LockHolders(tmp_path)
    for file, expected in ((path, (True, holder.pid)), (free, (False, None))):
        fd = os.open(file, os.O_RDONLY)
        try:
            assert holders.holder(fd) == expected
        finally:
            os.close(fd)


def test_a_lock_released_since_the_last_read_counts_as_free(held_file, tmp_path):
    path, holder = held_file
    holders = LockHolders(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert holders.holder(fd) == (True, holder.pid)
        holder.kill()
        holder.wait()
        # The cached read still lists the dead holder's lock: the kernel's answer is first.
        assert holders.holder(fd) == (False, None)
    finally:
        os.close(fd)


def test_the_folders_device_is_the_one_proc_locks_shows_for_its_lock_files(held_file, tmp_path):
    path, holder = held_file
    (key,) = [key for key, pid in flock_holders().items() if pid == holder.pid]
    assert key[2] == path.stat().st_ino
    assert LockHolders(tmp_path)._folder_device() == key[:2]
    # The shared lock taken to learn it is gone with the look.
    mine = [pid for _, pid, _ in _platform.host_flocks() if pid == os.getpid()]
    assert mine == []


class _Stat:
    """The two fields of an ``os.stat_result`` the lookup reads."""

    def __init__(self, device: tuple[int, int], inode: int) -> None:
        self.st_dev, self.st_ino = os.makedev(*device), inode


@pytest.mark.parametrize(
    ("holders", "device", "expected"),
    [
        pytest.param({(8, 1, 42): 10, (8, 2, 42): 11}, None, 10, id="device-and-inode"),
        # overlayfs and btrfs show another device than stat: the inode alone, where unique.
        pytest.param({(0, 50, 42): 12, (8, 2, 7): 11}, None, 12, id="inode-alone"),
        pytest.param({(0, 50, 42): 12, (0, 51, 42): 13}, None, None, id="ambiguous-inode"),
        pytest.param({(0, 50, 42): 12, (0, 51, 42): 13}, (0, 51), 13, id="learnt-device"),
        pytest.param({(8, 2, 7): 11}, None, None, id="not-held"),
    ],
)
def test_the_holder_is_named_only_when_certain(holders, device, expected):
    assert holder_pid(holders, _Stat((8, 1), 42), device) == expected
