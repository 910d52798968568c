"""Core leases: kernel locks that die with their holder, exclusive across processes and threads."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from pinbackend.host.holders import busy_cpus, list_leases
from pinbackend.host.leases import LeaseConflict, claim, claim_first_free, held_leases
from pinbackend.host.registry import (
    REGISTRY_ENV,
    LeaseError,
    RegistryError,
    UnsafeLeaseFile,
    registry_dir,
)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pinbackend.host.leases import claim
    lease = claim({cores}, command="holder-under-test")
    print("held", flush=True)
    sys.stdin.read()
    """
)


@contextlib.contextmanager
def holding(code):
    """Run a child that takes a lock, wait until it holds it, kill it on exit."""
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            yield holder
        finally:
            holder.kill()
            holder.wait()


def test_claim_release_and_list():
    with claim({0}, command="unit test") as lease:
        (info,) = list_leases()
        assert info.pid == os.getpid()
        assert info.cores == {0}
        assert info.command == "unit test"
        assert info.lease_id == lease.lease_id
        assert busy_cpus() == {0}
        assert held_leases() == [lease]
    assert list_leases() == []
    assert busy_cpus() == frozenset()


def test_a_second_claim_in_the_same_process_conflicts():
    with claim({0, 1}):
        with pytest.raises(LeaseConflict, match=rf"CPUs 1 are held by pid {os.getpid()}") as info:
            claim({1})
        assert info.value.busy == {1}
        # A disjoint set is fine.
        with claim({2}):
            pass


def test_sigkill_of_the_holder_frees_its_cores_at_once():
    with holding(HOLDER.format(cores={0})) as holder:
        (info,) = list_leases()
        assert (info.pid, info.cores, info.command) == (holder.pid, {0}, "holder-under-test")
        with pytest.raises(LeaseConflict, match=f"pid {holder.pid} \\(holder-under-test\\)"):
            claim({0})
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # No waiting, no timeout: the kernel dropped the lock when the holder died.
    with claim({0}):
        pass


def test_waiting_claim_gets_the_cores_when_the_holder_exits():
    with holding(HOLDER.format(cores={0})) as holder:
        timer = threading.Timer(0.3, holder.kill)
        timer.start()
        with claim({0}, timeout=20):
            pass
        timer.join()


def test_fork_child_neither_inherits_nor_releases_the_lease():
    lease = claim({0})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: holds nothing, and exiting must not free the parent's CPU
        os.close(read_end)
        os.write(write_end, b"1" if held_leases() == [] else b"0")
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == b"1"
    os.close(read_end)
    os.waitpid(pid, 0)
    with pytest.raises(LeaseConflict):
        claim({0})
    lease.release()


def test_released_lease_is_free_while_a_forked_child_still_lives():
    lease = claim({0})
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(to_parent_w, b"up")  # at-fork handlers have run by now
        os.read(to_child_r, 1)  # live until the parent says so
        os._exit(0)
    try:
        assert os.read(to_parent_r, 2) == b"up"
        lease.release()
        with claim({0}):  # the child's copy of the descriptor was closed at fork
            pass
    finally:
        os.write(to_child_w, b"x")
        os.waitpid(pid, 0)
        for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
            os.close(fd)


def test_threads_racing_for_one_cpu_get_it_exactly_once():
    winners, barrier = [], threading.Barrier(8)

    def contender():
        barrier.wait()
        try:
            winners.append(claim({3}))
        except LeaseConflict:
            pass

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    winners[0].release()


def test_claim_first_free_skips_held_sets():
    with claim({0}):
        with claim_first_free([{0}, {1}, {2}]) as lease:
            assert lease.cores == {1}
        with pytest.raises(LeaseConflict, match="none of the 1 planned core sets is free"):
            claim_first_free([{0}])


def test_empty_claim_is_refused():
    with pytest.raises(LeaseError, match="empty set of CPUs"):
        claim(set())


def test_registry_refuses_a_directory_open_to_others(lease_registry):
    lease_registry.chmod(0o755)
    try:
        with pytest.raises(RegistryError, match="has mode 0755; it must be 0700"):
            claim({0})
    finally:
        lease_registry.chmod(0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_registry_refuses_a_directory_owned_by_someone_else(lease_registry):
    os.chown(lease_registry, 4242, 4242)
    try:
        with pytest.raises(RegistryError, match="is owned by uid 4242"):
            registry_dir()
    finally:
        os.chown(lease_registry, os.getuid(), os.getgid())


def test_registry_refuses_a_symlinked_directory(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with monkeypatch.context() as patch:
        patch.setenv("PINBACKEND_RUNTIME_DIR", str(tmp_path / "link"))
        with pytest.raises(RegistryError, match="is a symbolic link"):
            claim({0})


def test_registry_refuses_a_planted_symlink_lock_file(lease_registry, tmp_path):
    target = tmp_path / "victim"
    target.write_text("do not touch")
    (lease_registry / "cpu-0.lock").symlink_to(target)
    with pytest.raises(RegistryError, match=r"refusing lease file .*cpu-0\.lock"):
        claim({0})
    assert target.read_text() == "do not touch"
    assert_refused_path_is_refused_by_readers(lease_registry / "cpu-0.lock")


def assert_refused_path_is_refused_by_readers(path):
    """A lock path no claim can use is refused by readers too, at once (fail closed, named)."""
    with pytest.raises(UnsafeLeaseFile, match=f"refusing lease file {path}"):
        list_leases()
    with pytest.raises(UnsafeLeaseFile, match=f"refusing lease file {path}"):
        busy_cpus()
    path.unlink()
    assert list_leases() == []


def test_registry_refuses_a_lock_that_is_not_a_regular_file(lease_registry):
    os.mkfifo(lease_registry / "cpu-1.lock", 0o600)
    with pytest.raises(RegistryError, match=r"cpu-1\.lock: it is a FIFO"):
        claim({1})
    assert_refused_path_is_refused_by_readers(lease_registry / "cpu-1.lock")


def test_a_held_lock_with_a_corrupt_record_fails_closed(lease_registry):
    # A foreign process holds CPU 2's lock file but wrote garbage into it.
    path = lease_registry / "cpu-2.lock"
    path.write_bytes(b"\x00garbage{")
    code = (
        f"import fcntl,sys; f=open({str(path)!r}); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); sys.stdin.read()"
    )
    with holding(code):
        (info,) = list_leases()
        assert info.pid is None and info.command == "(unreadable record)"
        with pytest.raises(LeaseConflict, match=r"CPUs 2 are held by an unknown process \(its rec"):
            claim({2})


def test_shared_claim_records_the_busy_cpus():
    with claim({0}), claim({0, 1}, share=True) as shared:
        assert shared.info.shared == {0}
        assert busy_cpus() == {0, 1}


def test_registry_is_one_folder_per_user_not_under_session_dirs(tmp_path, monkeypatch):
    # XDG_RUNTIME_DIR and TMPDIR differ between sessions of one user: they must not matter.
    expected = Path(f"/tmp/pinbackend-{os.getuid()}")
    existed = expected.exists()
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    try:
        with monkeypatch.context() as patch:
            patch.delenv(REGISTRY_ENV)
            patch.setenv("XDG_RUNTIME_DIR", str(runtime))
            patch.setenv("TMPDIR", str(tmp_path))
            patch.setattr(tempfile, "tempdir", str(tmp_path))
            assert registry_dir() == expected
            assert stat.S_IMODE(os.stat(expected).st_mode) == 0o700
            assert not (runtime / "pinbackend").exists()
    finally:
        if not existed:
            expected.rmdir()


def test_registry_variable_wins_and_must_be_absolute(tmp_path, monkeypatch):
    chosen = tmp_path / "chosen"
    with monkeypatch.context() as patch:
        patch.setenv(REGISTRY_ENV, str(chosen))
        assert registry_dir() == chosen
        assert stat.S_IMODE(os.stat(chosen).st_mode) == 0o700
        patch.setenv(REGISTRY_ENV, "leases")
        with pytest.raises(RegistryError, match=r"PINBACKEND_RUNTIME_DIR='leases' is relative"):
            registry_dir()


def test_registry_refuses_a_hard_linked_lock_file(lease_registry, tmp_path):
    # A hard link makes the lock file another file's alias; a symlink check cannot see it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    os.link(elsewhere, lease_registry / "cpu-0.lock")
    with pytest.raises(RegistryError, match=r"cpu-0\.lock: it has 2 hard links"):
        claim({0})
    assert_refused_path_is_refused_by_readers(lease_registry / "cpu-0.lock")
