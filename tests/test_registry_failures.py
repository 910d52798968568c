"""The lease registry when things go wrong: full or read-only disks, hostile records, leftovers.

Every failure must end in one line that names the cause and the remedy (a ``RegistryError``
or ``LeaseConflict``), hold no lock it did not finish taking, and never crash a reader.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
from _helpers import pinbackend_cli

from pinbackend.cli import status
from pinbackend.core.planner import PlanError
from pinbackend.host import jobs, leases
from pinbackend.host.holders import busy_cpus, list_leases
from pinbackend.host.jobs import list_jobs, register_job
from pinbackend.host.leases import LeaseConflict, claim, held_leases
from pinbackend.host.registry import REGISTRY_ENV, RegistryError, registry_dir

# --- helpers -------------------------------------------------------------------------------


def is_locked(path: Path) -> bool:
    """Whether some open file description holds ``path``'s flock (ours are separate ones too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` up to the last page; return the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as stream, contextlib.suppress(OSError):
        while True:
            stream.write(b"x" * 4096)
    return filler


@pytest.fixture
def tiny_registry(tmp_path, lease_registry, monkeypatch):
    """Mount a tiny tmpfs as this test's lease registry: ``mount(options)`` gives its path.

    The registry variable points back at the normal per-test registry before the unmount,
    and an unmount that fails because a descriptor is still open there fails the test: a
    claim that failed must not keep its lock files open.
    """
    mount_point = tmp_path / "tiny-registry"
    mount_point.mkdir(mode=0o700)
    mounted = []

    def mount(options: str) -> Path:
        command = ["mount", "-t", "tmpfs", "-o", f"{options},mode=0700", "tmpfs", str(mount_point)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(mount_point)
        monkeypatch.setenv(REGISTRY_ENV, str(mount_point))
        return mount_point

    yield mount
    monkeypatch.setenv(REGISTRY_ENV, str(lease_registry))
    for path in mounted:
        result = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)
            pytest.fail(f"the small tmpfs stayed busy (a leaked descriptor?): {result.stderr}")


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def assert_one_line_without_blaming_a_symlink(error: Exception) -> None:
    message = str(error)
    assert "\n" not in message
    assert "symbolic link" not in message and "planted" not in message
    assert REGISTRY_ENV in message


# --- 1 and 2: a claim that fails half way holds nothing, and says why ---------------------


def test_a_claim_that_cannot_write_its_second_record_holds_nothing(tiny_registry):
    registry = tiny_registry("size=16k")
    # CPU 0's file has an old record (a page the claim frees and reuses), CPU 1's is empty:
    # on the full disk the first record fits and the second does not.
    (registry / "cpu-0.lock").write_bytes(b"old record")
    (registry / "cpu-1.lock").write_bytes(b"")
    filler = fill(registry)
    with pytest.raises(RegistryError, match=r"cpu-1\.lock: No space left on device") as error:
        claim({0, 1})
    assert "full" in str(error.value)
    assert_one_line_without_blaming_a_symlink(error.value)
    assert not is_locked(registry / "cpu-0.lock")
    assert not is_locked(registry / "cpu-1.lock")
    assert held_leases() == [] and list_leases() == []
    filler.unlink()
    with claim({0, 1}) as lease:  # all or nothing: the same claim works once there is room
        assert lease.cores == {0, 1}


def test_a_claim_that_cannot_create_its_second_lock_file_holds_nothing(tiny_registry):
    registry = tiny_registry("size=64k,nr_inodes=2")  # the folder and one file
    with pytest.raises(RegistryError, match=r"cpu-1\.lock: No space left on device") as error:
        claim({0, 1})
    assert_one_line_without_blaming_a_symlink(error.value)
    assert not is_locked(registry / "cpu-0.lock")
    assert held_leases() == [] and list_leases() == []


def test_a_read_only_registry_says_so(tiny_registry):
    registry = tiny_registry("size=64k")
    (registry / "cpu-0.lock").write_bytes(b"")
    remount_read_only(registry)
    for cpus in ({0}, {1}, {0, 1}):  # an existing lock file, a missing one, both
        with pytest.raises(RegistryError, match="Read-only file system") as error:
            claim(cpus)
        assert "writable" in str(error.value)
        assert_one_line_without_blaming_a_symlink(error.value)
    assert held_leases() == [] and list_leases() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_lock_file_we_may_not_open_says_permission_denied():
    # A registry of user 4242 with a lock file only root may open: 4242 gets EACCES.
    registry = Path(tempfile.mkdtemp(prefix="pinbackend-test-", dir="/tmp"))
    try:
        (registry / "cpu-0.lock").write_bytes(b"")
        os.chown(registry, 4242, 4242)
        code = (
            # Import as root: the interpreter's own files may not be readable by uid 4242.
            "import os\nfrom pinbackend.host.leases import claim\n"
            "from pinbackend.host.registry import RegistryError\n"
            "os.setgid(4242); os.setuid(4242)\n"
            "try:\n    claim({0})\nexcept RegistryError as error:\n    print(error)"
        )
        env = {**os.environ, REGISTRY_ENV: str(registry)}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/"
        )
        assert "Permission denied" in result.stdout, result.stderr
        assert "writable by you" in result.stdout
        assert "symbolic link" not in result.stdout and REGISTRY_ENV in result.stdout
    finally:
        shutil.rmtree(registry)


def test_only_a_planted_file_is_blamed_on_a_planted_file(lease_registry, tmp_path):
    (tmp_path / "victim").write_text("")
    (lease_registry / "cpu-0.lock").symlink_to(tmp_path / "victim")
    try:
        with pytest.raises(RegistryError, match="it is a symbolic link, not a lock file"):
            claim({0})
    finally:
        (lease_registry / "cpu-0.lock").unlink()


# --- 3: hostile lock records ----------------------------------------------------------------

GOOD = {"lease_id": "0123456789ab", "pid": 1, "cores": [2], "command": "x", "since": 1.0}


def record(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


HOSTILE_RECORDS = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "nested in a field": record(command="[]").replace(b'"[]"', b"[" * 50_000 + b"]" * 50_000),
    "pid Infinity": record().replace(b'"pid": 1', b'"pid": Infinity'),
    "pid NaN": record().replace(b'"pid": 1', b'"pid": NaN'),
    "since -Infinity": record().replace(b'"since": 1.0', b'"since": -Infinity'),
    "pid 1e400": record().replace(b'"pid": 1', b'"pid": 1e400'),
    "pid with 5000 digits": record().replace(b'"pid": 1', b'"pid": ' + b"9" * 5000),
    "pid 10**30": record(pid=10**30),
    "pid true": record(pid=True),
    "pid as text": record(pid="1"),
    "pid negative": record(pid=-5),
    "cores as text": record(cores="2"),
    "cores of another CPU": record(cores=[0]),
    "cores huge": record(cores=[2, 10**20]),
    "owner a list": record(owner=[1]),
    "shared not a list": record(shared=7),
    "lease id a path": record(lease_id="../../etc"),
    "command not text": record(command={"a": 1}),
    "not an object": b"[1, 2, 3]",
    "not UTF-8": b'{"pid": "\xff\xfe"}',
    "larger than a record may be": record(command="y" * (2 << 20)),
}


@contextlib.contextmanager
def held_by_a_stranger(path: Path, content: bytes | None = None):
    """Hold ``path``'s flock through a separate open file description, as another process."""
    if content is not None:
        path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def status_of_this_registry(capsys) -> tuple[dict, str]:
    """``status --json`` and ``status``, run in this process against the test's registry."""
    assert status.run(argparse.Namespace(json=True)) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert status.run(argparse.Namespace(json=False)) == 0
    return as_json, capsys.readouterr().out


def assert_unknown_holder_of_cpu(cpu: int, capsys) -> None:
    (info,) = list_leases()
    assert (info.pid, info.cores, info.command) == (None, {cpu}, "(unreadable record)")
    assert busy_cpus() == {cpu}
    (info,) = list_leases(scope=None)
    assert info.pid is None
    as_json, text = status_of_this_registry(capsys)
    (lease,) = as_json["leases"]
    assert (lease["pid"], lease["cores"], lease["command"]) == (None, [cpu], "(unreadable record)")
    assert "(unreadable record)" in text


@pytest.mark.parametrize("content", HOSTILE_RECORDS.values(), ids=HOSTILE_RECORDS.keys())
def test_a_hostile_record_reads_as_an_unknown_holder_and_fails_closed(
    content, lease_registry, capsys
):
    with held_by_a_stranger(lease_registry / "cpu-2.lock", content):
        assert_unknown_holder_of_cpu(2, capsys)
        with pytest.raises(LeaseConflict, match=r"CPUs 2 are held by an unknown process"):
            claim({2})


def test_a_plan_names_a_held_lock_with_a_hostile_record_as_an_unknown_process(lease_registry):
    from joblib import Parallel, delayed

    cpu = min(os.sched_getaffinity(0))
    path = lease_registry / f"cpu-{cpu}.lock"
    with held_by_a_stranger(path, HOSTILE_RECORDS["pid NaN"]), pytest.raises(PlanError) as error:
        # The pinned backend (registered by importing pinbackend) refuses before any worker.
        Parallel(n_jobs=2, backend="pinned", oversubscribe="error")(
            delayed(abs)(i) for i in range(2)
        )
    message = str(error.value)
    assert f"taken: CPUs {cpu} by an unknown process (its record of CPU {cpu} is" in message
    assert "pid None" not in message


def test_status_on_the_command_line_survives_a_hostile_record(lease_registry):
    content = HOSTILE_RECORDS["pid Infinity"]
    with held_by_a_stranger(lease_registry / "cpu-2.lock", content):
        for args in (("status",), ("status", "--json")):
            result = pinbackend_cli(*args)
            assert result.returncode == 0, result.stderr
            assert "(unreadable record)" in result.stdout
            assert "Traceback" not in result.stderr


# A lock file path that holds no lock file at all (symlink, FIFO, directory, hard link,
# another user's file) is refused at once, not read as busy: see test_unsafe_lease_files.py.


def test_status_shows_a_hostile_command_without_its_control_characters(lease_registry, capsys):
    content = record(command="evil\x1b]0;pwned\x07\nsecond line", pid=os.getpid())
    with held_by_a_stranger(lease_registry / "cpu-2.lock", content):
        _, text = status_of_this_registry(capsys)
    assert "\x1b" not in text and "\x07" not in text and "second line" in text
    assert len([line for line in text.splitlines() if "evil" in line]) == 1


# --- 4: job records -------------------------------------------------------------------------


def write_job(directory: Path, pid: int, **changes) -> Path:
    data = {"pid": pid, "command": "job", "since": 1.0, "options": {}, "create_time": 1.0}
    path = directory / f"job-{pid}.json"
    path.write_text(json.dumps({**data, **changes}))
    return path


def job_record(**raw_fields: bytes) -> bytes:
    """A record of a live job (this process), with some fields replaced by raw JSON text."""
    fields = {
        "pid": str(os.getpid()).encode(),
        "command": b'"job"',
        "since": b"1.0",
        "options": b'{"processes": 2}',
        "create_time": repr(psutil.Process().create_time()).encode(),
        **raw_fields,
    }
    return b"{" + b", ".join(b'"%s": %s' % (k.encode(), v) for k, v in fields.items()) + b"}"


HOSTILE_JOBS = {
    "pid Infinity": {"pid": b"Infinity"},
    "pid 10**30": {"pid": b"1" + b"0" * 30},
    "pid true": {"pid": b"true"},
    "create_time NaN": {"create_time": b"NaN"},
    "create_time 1e400": {"create_time": b"1e400"},
    "since as text": {"since": b'"yesterday"'},
    "command not text": {"command": b"[1]"},
    "deeply nested options": {"options": b"[" * 100_000 + b"]" * 100_000},
    "options nested": {"options": b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}"},
    "options with Infinity": {"options": b'{"a": Infinity}'},
    "options a string": {"options": b'"ab"'},
}


def test_a_valid_job_record_of_a_live_process_is_listed(lease_registry, capsys):
    # The control for the hostile variants below: the same record, unspoiled, is listed.
    (lease_registry / f"job-{os.getpid()}.json").write_bytes(job_record())
    (job,) = list_jobs()
    assert (job.pid, job.options) == (os.getpid(), {"processes": 2})
    as_json, _ = status_of_this_registry(capsys)
    assert [job["pid"] for job in as_json["jobs"]] == [os.getpid()]


@pytest.mark.parametrize("fields", HOSTILE_JOBS.values(), ids=HOSTILE_JOBS.keys())
def test_a_hostile_job_record_is_ignored(fields, lease_registry, capsys):
    path = lease_registry / f"job-{os.getpid()}.json"
    path.write_bytes(job_record(**fields))
    assert list_jobs() == []
    as_json, _ = status_of_this_registry(capsys)
    assert as_json["jobs"] == []
    assert path.exists()  # not known to be stale: left alone


def test_status_on_the_command_line_survives_a_hostile_job_record(lease_registry):
    (lease_registry / f"job-{os.getpid()}.json").write_bytes(job_record(pid=b"Infinity"))
    for args in (("status",), ("status", "--json")):
        result = pinbackend_cli(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_register_job_on_an_unwritable_registry_raises_one_line(disk, tiny_registry):
    registry = tiny_registry("size=16k")
    if disk == "full":
        fill(registry)
        expected = "No space left on device"
    else:
        remount_read_only(registry)
        expected = "Read-only file system"
    with pytest.raises(RegistryError, match=expected) as error:
        register_job("python -m pinbackend job.py", {"processes": 2})
    assert_one_line_without_blaming_a_symlink(error.value)
    assert sorted(p.name for p in registry.iterdir()) == (["filler"] if disk == "full" else [])


# --- 5a: job records of killed jobs ---------------------------------------------------------

JOB = textwrap.dedent(
    """
    import sys
    from pinbackend.host.jobs import register_job
    register_job("job-under-test", {})
    print("registered", flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_record_of_a_killed_job_is_removed_by_the_next_reader(how, lease_registry):
    with subprocess.Popen(
        [sys.executable, "-c", JOB], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as job:
        assert job.stdout.readline().strip() == "registered"
        assert [info.pid for info in list_jobs()] == [job.pid]
        job.send_signal(how)
        job.wait()
    assert (lease_registry / f"job-{job.pid}.json").exists()  # nobody cleaned up at exit
    assert list_jobs() == []
    assert not (lease_registry / f"job-{job.pid}.json").exists()


def test_register_job_removes_the_records_of_dead_and_reused_pids(lease_registry):
    dead = write_job(lease_registry, 2**22 + 7)  # above any pid_max: never a live process
    reused = write_job(lease_registry, os.getppid(), create_time=12.0)  # same pid, other start
    job = register_job("python -m pinbackend job.py", {})
    try:
        assert not dead.exists() and not reused.exists()
        assert [info.pid for info in list_jobs()] == [os.getpid()]
    finally:
        job.end()


def test_a_stale_record_replaced_meanwhile_is_kept(lease_registry, monkeypatch):
    # A reader finds job-<pid>.json stale; before it removes the file, the process that now
    # has that pid registers itself: the new record must survive.
    pid = os.getpid()
    path = write_job(lease_registry, pid, create_time=12.0)
    real_alive = jobs._alive

    def alive_then_replaced(info):
        result = real_alive(info)
        if info.create_time == 12.0:
            fresh = lease_registry / "fresh"
            fresh.write_text(json.dumps({**json.loads(path.read_text()), "command": "fresh"}))
            os.replace(fresh, path)
        return result

    monkeypatch.setattr(jobs, "_alive", alive_then_replaced)
    list_jobs()
    assert json.loads(path.read_text())["command"] == "fresh"
    path.unlink()


# --- 5b: scope folders of leases that ended without release() -------------------------------

NESTED = textwrap.dedent(
    """
    import sys
    from pinbackend.host.leases import claim
    parent = claim({0}, command="parent")
    nested = claim({0}, scope=parent.lease_id, command="nested")
    if "release-nested" in sys.argv:
        nested.release()
    print(parent.lease_id, flush=True)
    sys.stdin.read()
    """
)

NESTED_ONLY = textwrap.dedent(
    """
    import sys
    from pinbackend.host.leases import claim
    nested = claim({0}, scope=sys.argv[1], command="orphan")
    print("held", flush=True)
    sys.stdin.read()
    """
)


@contextlib.contextmanager
def started(code: str, *args: str):
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            yield child, child.stdout.readline().strip()
        finally:
            child.kill()
            child.wait()


def scope_folders(registry: Path) -> list[str]:
    return sorted(p.name for p in registry.iterdir() if p.name.startswith("scope-"))


@pytest.mark.parametrize("collector", ["list_leases", "claim"])
def test_the_scope_of_a_killed_lease_is_collected(collector, lease_registry):
    with started(NESTED) as (holder, parent_id):
        assert scope_folders(lease_registry) == [f"scope-{parent_id}"]
        list_leases(scope=None)
        assert scope_folders(lease_registry) == [f"scope-{parent_id}"]  # still held
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert scope_folders(lease_registry) == [f"scope-{parent_id}"]
    if collector == "list_leases":
        assert list_leases(scope=None) == []
    else:
        claim({1}).release()
    assert scope_folders(lease_registry) == []


def test_an_idle_scope_stays_while_its_parent_lease_is_held(lease_registry):
    with started(NESTED, "release-nested") as (_, parent_id):
        (parent,) = list_leases(scope=None)
        assert parent.lease_id == parent_id
        assert scope_folders(lease_registry) == [f"scope-{parent_id}"]
        claim({1}).release()
        assert scope_folders(lease_registry) == [f"scope-{parent_id}"]
    list_leases(scope=None)
    assert scope_folders(lease_registry) == []


def test_a_scope_stays_while_an_orphan_holds_a_lease_in_it(lease_registry):
    with (
        started(NESTED, "release-nested") as (parent, parent_id),
        started(NESTED_ONLY, parent_id) as (orphan, _),
    ):
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        (info,) = list_leases(scope=None)
        assert (info.pid, info.scope) == (orphan.pid, parent_id)
        assert scope_folders(lease_registry) == [f"scope-{parent_id}"]
    list_leases(scope=None)
    assert scope_folders(lease_registry) == []


def test_a_claim_racing_the_collector_holds_the_file_that_stays(lease_registry, monkeypatch):
    # The collector removes a folder between a nested claim's open() and its flock(): the
    # claim must notice that its file was unlinked and lock the folder's new file instead.
    scope = "0123456789ab"  # no live lease has this id
    folder = lease_registry / f"scope-{scope}"
    folder.mkdir(mode=0o700)
    (folder / "cpu-0.lock").write_bytes(b"")
    real_open = leases.open_file
    calls = []

    def open_then_collected(path):
        fd = real_open(path)
        if not calls:
            calls.append(path)
            list_leases(scope=None)  # collects the folder: its parent lease is not held
            assert not folder.exists()
        return fd

    monkeypatch.setattr(leases, "open_file", open_then_collected)
    with claim({0}, scope=scope) as lease:
        assert os.fstat(lease.fds()[0]).st_nlink == 1
        assert is_locked(folder / "cpu-0.lock")
        with pytest.raises(LeaseConflict):
            claim({0}, scope=scope)


# --- 6: one registry per user, whatever the session's environment says ---------------------


@pytest.mark.parametrize("variable", ["unset", "empty"])
def test_registry_is_one_fixed_place_per_user_whatever_the_session_says(
    variable, tmp_path, monkeypatch
):
    # Set but empty counts as unset (docs/configuration.md): the user's one default folder.
    expected = Path(f"/tmp/pinbackend-{os.getuid()}")
    existed = expected.exists()
    try:
        with monkeypatch.context() as patch:
            if variable == "unset":
                patch.delenv(REGISTRY_ENV)
            else:
                patch.setenv(REGISTRY_ENV, "")
            patch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
            patch.setenv("TMPDIR", str(tmp_path))
            patch.setattr("tempfile.tempdir", str(tmp_path))
            assert registry_dir() == expected
            assert expected.stat().st_mode & 0o777 == 0o700
    finally:
        if not existed:
            expected.rmdir()


def test_jobs_of_one_user_in_different_sessions_share_one_registry(tmp_path):
    # Two sessions of one user: different runtime and temporary directories. CPU 4093 is
    # no real CPU, so the claim cannot disturb real leases on this host's real registry.
    sessions = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir(mode=0o700)
        env = {k: v for k, v in os.environ.items() if k != REGISTRY_ENV}
        sessions.append(
            {**env, "XDG_RUNTIME_DIR": str(tmp_path / name), "TMPDIR": str(tmp_path / name)}
        )
    second = "from pinbackend.host.leases import claim; claim({4093})"
    code = f"{second}; import sys; print('held', flush=True); sys.stdin.read()"
    registry = Path(f"/tmp/pinbackend-{os.getuid()}")
    try:
        with subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=sessions[0],
        ) as holder:
            try:
                assert holder.stdout.readline().strip() == "held"
                result = subprocess.run(
                    [sys.executable, "-c", second], capture_output=True, text=True, env=sessions[1]
                )
                assert "LeaseConflict: CPUs 4093 are held by pid" in result.stderr
            finally:
                holder.kill()
                holder.wait()
    finally:
        with contextlib.suppress(FileNotFoundError):
            (registry / "cpu-4093.lock").unlink()


def test_a_relative_registry_variable_is_refused(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setenv(REGISTRY_ENV, "relative/leases")
        with pytest.raises(RegistryError, match=r"'relative/leases'.*must be an absolute path"):
            claim({0})


# --- every entry point on a full or read-only registry: one line, exit status 2 ------------


@pytest.mark.parametrize("disk", ["full", "read-only"])
@pytest.mark.parametrize("entry", ["run", "runner", "status"])
def test_every_command_on_an_unusable_registry_ends_in_one_line(entry, disk, tiny_registry):
    registry = tiny_registry("size=64k")
    if disk == "full":
        fill(registry)
    else:
        remount_read_only(registry)
    script = registry.parent / "job.py"
    script.write_text("print('the program ran')\n")
    args = {
        "run": ["run", "-n", "1", "--", "true"],
        "runner": [str(script)],
        "status": ["status"],
    }[entry]
    result = pinbackend_cli(*args, env={REGISTRY_ENV: str(registry)})
    if entry == "status":  # reading needs no space and no write access
        assert result.returncode == 0 and "lease registry:" in result.stdout, result.stderr
        return
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("pinbackend: error:") and "Traceback" not in result.stderr
    assert "planted" not in lines[0]
    assert "the program ran" not in result.stdout
