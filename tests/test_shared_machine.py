"""Two real users of one host with no set-up: each has only a per-user registry, and their
jobs still keep off each other's CPUs, because each sees the other's pinned processes in
/proc (``other_pins="avoid"``, the default). The issue's cases, as two users ran them: two
``run -n 1`` commands, two ``Parallel(n_jobs=-1)`` jobs, and a ``taskset``-pinned process.

Needs root to make the users (CI is); see ``_users.py``. With the host registry
(``host init``) the same cases are in tests/test_host_registry.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
import time

import pytest
from _users import SharedPython, private_folder, unix_user, wait_until, world_folder

from pinbackend.host.foreign import pinned_holders

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two users need 2 CPUs"),
]

CPUS = sorted(os.sched_getaffinity(0))

#: Busy for a while, saying where it runs at its start and at its end.
BUSY = textwrap.dedent(
    """
    import json, os, sys, time
    def where():
        return {"cpus": sorted(os.sched_getaffinity(0)), "at": time.time()}
    print(json.dumps(where()), flush=True)
    end = time.time() + float(sys.argv[1])
    while time.time() < end:
        pass
    print(json.dumps(where()), flush=True)
    """
)

#: A joblib job over every core whose tasks report their CPUs and times.
JOBLIB = textwrap.dedent(
    """
    import json, os, sys, time
    import pinbackend
    from joblib import Parallel, delayed
    def task(i):
        start = time.time()
        while time.time() - start < float(sys.argv[1]):
            pass
        return {"cpus": sorted(os.sched_getaffinity(0)), "start": start, "end": time.time()}
    print("started", flush=True)
    out = Parallel(n_jobs=-1, backend="pinned", claim_timeout=60)(
        delayed(task)(i) for i in range(int(sys.argv[2])))
    print(json.dumps(out), flush=True)
    """
)


class Host:
    """Two users, each with a private registry, running this test run's Python."""

    def __init__(self, python: SharedPython, users):
        self.python = python
        self.root = world_folder()
        self.homes = {user.name: private_folder(self.root, user) for user in users}
        self.started: list[subprocess.Popen] = []
        self.scripts = {}
        for name, text in (("busy.py", BUSY), ("joblib_job.py", JOBLIB)):
            path = self.root / name
            path.write_text(text)
            path.chmod(0o644)
            self.scripts[name] = str(path)

    def start(self, user, *args: str) -> subprocess.Popen:
        home = self.homes[user.name]
        env = self.python.env(home, {"PINBACKEND_RUNTIME_DIR": str(home / "leases")})
        line = self.python.command(user, list(args), env)
        process = subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(process)
        return process

    def run_busy(self, user, seconds: float) -> subprocess.Popen:
        """``python -m pinbackend run -n 1 -- python busy.py SECONDS`` as ``user``."""
        python = self.python.executable
        busy = self.scripts["busy.py"]
        return self.start(
            user, "-m", "pinbackend", "run", "-n", "1", "--", python, busy, str(seconds)
        )

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def users(python_for_users):
    with unix_user("a") as alice, unix_user("b") as bob:
        yield alice, bob


@pytest.fixture
def host(python_for_users, users):
    built = Host(python_for_users, users)
    # Starts once nothing else on this machine is busy pinned (another test run, say).
    wait_until(lambda: not pinned_holders(frozenset(CPUS)), 60, "a host without busy pins")
    try:
        yield built
    finally:
        built.close()


def lines(process: subprocess.Popen, timeout: float = 90) -> list:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith(("{", "["))]


def test_two_users_run_n_1_one_after_the_other_get_different_cpus(host, users):
    """The issue's first case: before, both were pinned to CPU 0 and CPU 1 stayed idle."""
    alice, bob = users
    first = host.run_busy(alice, 3.0)
    line = first.stdout.readline()
    assert line, first.communicate()[1]
    alice_start = json.loads(line)  # alice runs, pinned
    time.sleep(0.3)
    bob_start, bob_end = lines(host.run_busy(bob, 1.0))
    (alice_end,) = lines(first)
    assert len(bob_start["cpus"]) == 1 and bob_start["cpus"] == bob_end["cpus"]
    assert alice_start["cpus"] == alice_end["cpus"]
    assert not set(alice_start["cpus"]) & set(bob_start["cpus"])


def test_a_second_users_pool_keeps_off_the_first_users_pinned_workers(host, users):
    """The issue's second case: both pinned their workers to CPUs 0-1, with no warning."""
    alice, bob = users
    job = host.scripts["joblib_job.py"]
    first = host.start(alice, job, "0.5", "12")  # 3 s on 2 cores
    assert first.stdout.readline() == "started\n"
    time.sleep(1.0)
    second = host.start(bob, job, "0.2", "4")
    theirs, mine = lines(first)[-1], lines(second)[-1]
    overlaps = [
        (a, b)
        for a in theirs
        for b in mine
        if a["start"] < b["end"] and b["start"] < a["end"] and set(a["cpus"]) & set(b["cpus"])
    ]
    assert not overlaps, overlaps
    assert all(len(task["cpus"]) == 1 for task in theirs + mine)


@contextlib.contextmanager
def taskset_busy(host, user, cpu: int):
    """``user`` runs a busy loop pinned to ``cpu`` with taskset (no pinbackend)."""
    home = host.homes[user.name]
    line = ["taskset", "-c", str(cpu)]
    line += host.python.command(user, [host.scripts["busy.py"], "60"], host.python.env(home, {}))
    process = subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    host.started.append(process)
    assert process.stdout.readline()
    yield process
    process.kill()


def test_another_users_taskset_process_is_avoided_and_named(host, users):
    """The issue's third case: a process another user pinned with taskset was ignored."""
    alice, bob = users
    with taskset_busy(host, bob, CPUS[0]):
        job = host.start(alice, host.scripts["joblib_job.py"], "0.1", "6")
        tasks = lines(job)[-1]
        assert {tuple(task["cpus"]) for task in tasks} == {(CPUS[1],)}
        refused = host.start(
            alice, "-m", "pinbackend", "run", "-n", str(len(CPUS)), "--", "true"
        ).communicate(timeout=60)[1]
    assert f"of user {bob.name} (" in refused and "pinned there by its CPU affinity" in refused
