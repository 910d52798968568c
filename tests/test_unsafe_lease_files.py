"""A lock file path that holds something no claim makes is refused at once, by every entry point.

A hard link, a symlink, a FIFO, a directory or another user's file where ``cpu-N.lock``
belongs (planted, or left by a mistake) is not a lease anyone holds. Each entry point must
say so in one line that names the file, what is wrong with it and the remedy, well before a
claim timeout could run out, and run nothing: no pool clamped around the core, no worker on
it. A *held* lock whose record is unreadable is another case (a live process of ours wrote
it): it counts as busy, see ``test_registry_failures.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import subprocess
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from _helpers import PYTHON, last_json, pinbackend_cli

from pinbackend.cli import status
from pinbackend.host.holders import list_leases
from pinbackend.host.leases import LeaseConflict, claim, claim_first_free, held_leases
from pinbackend.host.lifecycle import lease_slot
from pinbackend.host.options import DEFAULT_CLAIM_TIMEOUT, PinOptions
from pinbackend.host.registry import REGISTRY_ENV, UnsafeLeaseFile

CPU = min(os.sched_getaffinity(0))
#: Seconds an entry point may take to refuse, fresh interpreter included, on a busy 2-core
#: machine. The claim timeout it must not wait for is 30 s (the default).
AT_ONCE = 10.0
#: ...and the refusal itself, timed inside the process (it reads a few files).
AT_ONCE_IN_PROCESS = 2.0
SCOPE = "0123456789ab"

KINDS = {
    "hard link": "it has 2 hard links",
    "symlink": "it is a symbolic link",
    "fifo": "it is a FIFO",
    "directory": "it is a directory",
    "foreign owner": "its owner is uid",
}


def plant(kind: str, path: Path, elsewhere: Path) -> None:
    """Put ``kind`` where a lock file belongs."""
    if kind == "hard link":
        path.write_bytes(b"")
        os.link(path, elsewhere)
    elif kind == "symlink":
        elsewhere.write_bytes(b"")
        path.symlink_to(elsewhere)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another user")
        path.write_bytes(b"")
        os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)


class Planted(NamedTuple):
    path: Path
    kind: str


def remove(path: Path) -> None:
    path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


@pytest.fixture(params=list(KINDS))
def planted(request, lease_registry, tmp_path):
    """CPU's lock file in the test's registry replaced by something unsafe.

    Removed before the leak check lists the leases (which would refuse it too).
    """
    path = lease_registry / f"cpu-{CPU}.lock"
    plant(request.param, path, tmp_path / "elsewhere")
    try:
        yield Planted(path, request.param)
    finally:
        remove(path)


def assert_names_the_file(message: str, path: Path, kind: str) -> None:
    """One line: the file, what is wrong with it, the remedy."""
    assert "\n" not in message.strip(), message
    assert f"refusing lease file {path}: {KINDS[kind]}" in message, message
    assert "remove it" in message and REGISTRY_ENV in message, message
    assert "explain unsafe-lease-file" in message, message


# --- in this process: the survey, the claims and status ------------------------------------


def test_the_default_claim_timeout_is_the_one_we_must_not_wait_for():
    assert DEFAULT_CLAIM_TIMEOUT >= 3 * AT_ONCE


@pytest.mark.parametrize("where", ["registry", "scope folder"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_reader_and_claim_refuses_an_unsafe_lock_file_at_once(
    kind, where, lease_registry, tmp_path
):
    scope = SCOPE if where == "scope folder" else ""
    folder = lease_registry / f"scope-{SCOPE}" if scope else lease_registry
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"cpu-{CPU}.lock"
    plant(kind, path, tmp_path / "elsewhere")
    try:
        calls = {
            "list_leases": lambda: list_leases(scope),
            "claim": lambda: claim({CPU}, scope=scope, timeout=30),
            "claim_first_free": lambda: claim_first_free([{CPU}], scope=scope, timeout=30),
            # run -n and Dask workers claim through this (a plan of one slot, then a claim).
            "lease_slot": lambda: lease_slot(
                1, PinOptions(claim_timeout=30), command="x", scope=scope
            ),
        }
        for name, call in calls.items():
            start = time.monotonic()
            with pytest.raises(UnsafeLeaseFile) as error:
                call()
            assert time.monotonic() - start < AT_ONCE_IN_PROCESS, name
            assert_names_the_file(str(error.value), path, kind)
            assert (error.value.path, error.value.problem.startswith(KINDS[kind])) == (
                str(path),
                True,
            )
        assert held_leases() == []
        # status lists every lease and names the file instead of failing.
        problems = []
        assert list_leases(scope=None, problems=problems) == []
        (problem,) = problems
        assert problem.path == str(path)
    finally:
        remove(path)


@pytest.mark.parametrize("kind", ["hard link", "fifo", "directory", "foreign owner"])
def test_an_unsafe_lock_file_is_refused_even_while_something_holds_its_lock(
    kind, lease_registry, tmp_path
):
    # Not "busy, held by an unknown process": waiting for that holder cannot make it safe.
    path = lease_registry / f"cpu-{CPU}.lock"
    plant(kind, path, tmp_path / "elsewhere")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(UnsafeLeaseFile, match="refusing lease file"):
            list_leases()
        with pytest.raises(UnsafeLeaseFile, match="refusing lease file"):
            claim({CPU})
    finally:
        os.close(fd)
        remove(path)


def test_a_held_lock_with_an_unreadable_record_still_counts_as_busy(lease_registry):
    # The other case: a live process of ours holds the lock and wrote garbage (or is
    # writing). Its CPU is busy, never free and never refused.
    path = lease_registry / f"cpu-{CPU}.lock"
    path.write_bytes(b"garbage")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (info,) = list_leases()
        assert (info.pid, info.cores) == (None, {CPU})
        with pytest.raises(LeaseConflict, match="unknown process"):
            claim({CPU})
    finally:
        os.close(fd)


def test_status_lists_the_unsafe_file_beside_the_leases(planted, capsys):
    with claim({4093}) as lease:  # no real CPU: a lease to list beside the problem
        assert status.run(argparse.Namespace(json=True)) == 0
        captured = capsys.readouterr()
        data = json.loads(captured.out)
        assert [info["lease_id"] for info in data["leases"]] == [lease.lease_id]
        (problem,) = data["problems"]
        assert problem["path"] == str(planted.path)
        assert problem["problem"].startswith(KINDS[planted.kind])
        assert_names_the_file(problem["message"], *planted)
        assert_names_the_file(captured.err, *planted)
        assert status.run(argparse.Namespace(json=False)) == 0
        text = capsys.readouterr().out
        assert f"{planted.path}: {KINDS[planted.kind]}" in text and "4093" in text


# --- every entry point, as a user runs it -------------------------------------------------

JOBLIB = """
    import json, os, sys, threading, time
    from pathlib import Path
    import pinbackend
    from joblib import Parallel, delayed

    def task(i, prefer):
        name = f"{prefer}-{os.getpid()}-{threading.get_ident()}-{i}"
        Path(sys.argv[1], name).write_text(str(sorted(os.sched_getaffinity(0))))

    report = {}
    for prefer in ("processes", "threads"):
        start = time.monotonic()
        try:
            Parallel(n_jobs=2, backend="pinned", prefer=prefer)(
                delayed(task)(i, prefer) for i in range(4)
            )
            outcome = {"error": None}
        except Exception as error:
            outcome = {"error": type(error).__name__, "message": str(error)}
        report[prefer] = {**outcome, "seconds": time.monotonic() - start}
    print(json.dumps(report))
"""

POOL_PROGRAM = """
    import multiprocessing, os, sys
    from pathlib import Path

    def task(i):
        Path(sys.argv[1], f"{os.getpid()}-{i}").write_text(str(sorted(os.sched_getaffinity(0))))

    if __name__ == "__main__":
        print("the program ran", flush=True)
        if len(sys.argv) > 2:  # the unsafe file appears while the program runs
            os.mkfifo(sys.argv[2], 0o600)
        with multiprocessing.Pool(2) as pool:
            pool.map(task, range(4))
"""


@pytest.fixture
def marks(tmp_path) -> Path:
    """A folder every task writes one file into: empty means nothing ran."""
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


def test_joblib_pools_and_pinned_threads_refuse_at_once(planted, marks, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOBLIB))
    result = subprocess.run(
        [PYTHON, str(script), str(marks)], capture_output=True, text=True, timeout=120
    )
    report = last_json(result.stdout)
    for prefer, outcome in report.items():
        assert outcome["error"] == "UnsafeLeaseFile", (prefer, outcome, result.stderr)
        assert_names_the_file(outcome["message"], *planted)
        assert outcome["seconds"] < AT_ONCE_IN_PROCESS, (prefer, outcome)
    assert "PoolResizedWarning" not in result.stderr  # not clamped around it either
    assert list(marks.iterdir()) == []


def assert_refused_in_one_line(args: list[str], planted: Planted) -> None:
    start = time.monotonic()
    result = pinbackend_cli(*args, timeout=120)
    seconds = time.monotonic() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
    assert lines[0].startswith("pinbackend: error: refusing lease file"), lines
    assert_names_the_file(lines[0], *planted)
    assert seconds < AT_ONCE, (args, seconds)


def test_run_refuses_at_once(planted, marks):
    mark = str(marks / "ran")
    # --wait 30: the refusal must not wait for the file to "free up".
    assert_refused_in_one_line(["run", "--wait", "30", "-n", "1", "--", "touch", mark], planted)
    assert_refused_in_one_line(["run", "--cores", str(CPU), "--", "touch", mark], planted)
    assert list(marks.iterdir()) == []


def test_the_runner_refuses_before_the_program_runs(planted, marks, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(POOL_PROGRAM))
    assert_refused_in_one_line([str(script), str(marks)], planted)
    assert list(marks.iterdir()) == []


def test_a_runner_pool_refuses_a_file_planted_while_the_program_runs(
    lease_registry, marks, tmp_path
):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(POOL_PROGRAM))
    path = lease_registry / f"cpu-{CPU}.lock"
    start = time.monotonic()
    result = pinbackend_cli(str(script), str(marks), str(path), timeout=120)
    seconds = time.monotonic() - start
    try:
        assert "the program ran" in result.stdout
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("pinbackend.host.registry.UnsafeLeaseFile: refusing lease file")
        assert_names_the_file(last, path, "fifo")
        assert seconds < AT_ONCE
        assert list(marks.iterdir()) == []
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def test_info_names_the_file_instead_of_failing(planted):
    result = pinbackend_cli("info", "--import", "", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"refusing lease file {planted.path}" in result.stderr
    assert "Traceback" not in result.stderr


DASK = """
    import json, time
    from distributed import Client, LocalCluster
    from pinbackend.dask import PinPlugin, placement

    if __name__ == "__main__":
        options = dict(n_workers=1, threads_per_worker=1, dashboard_address=None)
        with LocalCluster(**options) as cluster, Client(cluster, timeout=60) as client:
            start = time.monotonic()
            client.register_plugin(PinPlugin())
            seconds = time.monotonic() - start
            (worker,) = placement(client)
            print(json.dumps({"seconds": seconds, **worker.to_dict()}))
"""


def test_a_dask_worker_refuses_to_start_at_once(lease_registry, tmp_path):
    # One kind is enough here: the worker's claim goes through the same survey (lease_slot)
    # as run -n, tested above for every kind.
    pytest.importorskip("distributed")
    path = lease_registry / f"cpu-{CPU}.lock"
    plant("fifo", path, tmp_path / "elsewhere")
    script = tmp_path / "cluster.py"
    script.write_text(textwrap.dedent(DASK))
    try:
        result = subprocess.run(
            [PYTHON, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        worker = last_json(result.stdout)
        assert (worker["outcome"], worker["pinned"], worker["cores"]) == ("refused", False, None)
        assert_names_the_file(worker["reason"], path, "fifo")
        assert worker["seconds"] < AT_ONCE
    finally:
        remove(path)
