"""A host registry for tests with real Unix users: one test's folder, its host registry, each
user's own registry, and the commands run as them (see ``_users.py``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _users import SharedPython, User, private_folder, unix_user, world_folder

#: A command that says where it runs, then stays (the lease lives as long as it does).
HOLD = textwrap.dedent(
    """
    import json, os, sys, time
    print(json.dumps({"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)),
                      "at": time.time()}), flush=True)
    time.sleep(float(sys.argv[1]))
    print(json.dumps({"cpus": sorted(os.sched_getaffinity(0)), "at": time.time()}), flush=True)
    """
)


#: The start of an attack script another user runs: ``attempt(name, action)`` records in
#: ``out`` whether ``action`` was done or which error the kernel gave (its errno name).
ATTEMPTS = textwrap.dedent(
    """
    import errno
    out = {}

    def attempt(name, action):
        try:
            action()
            out[name] = "done"
        except OSError as error:
            out[name] = errno.errorcode[error.errno]
    """
)


@dataclass
class Site:
    """One test's host: the folder, its host registry path and each user's own registry."""

    root: Path
    python: SharedPython
    host: Path
    homes: dict[str | None, Path] = field(default_factory=dict)
    started: list[subprocess.Popen] = field(default_factory=list)

    def env(self, user: User | None, **extra: str) -> dict[str, str]:
        home = self.homes[user.name if user else None]
        return self.python.env(
            home,
            {
                "PINBACKEND_RUNTIME_DIR": str(home / "leases"),
                "PINBACKEND_HOST_REGISTRY": str(self.host),
                **extra,
            },
        )

    def script(self, name: str, text: str) -> str:
        path = self.root / name
        path.write_text(text)
        path.chmod(0o644)
        return str(path)

    def run(self, user: User | None, *args: str, timeout: float = 60, **env: str):
        line = self.python.command(user, list(args), self.env(user, **env))
        return subprocess.run(line, capture_output=True, text=True, timeout=timeout)

    def cli(self, user: User | None, *args: str, **env: str):
        return self.run(user, "-m", "pinbackend", *args, **env)

    def start(self, user: User | None, *args: str, **env: str) -> subprocess.Popen:
        line = self.python.command(user, list(args), self.env(user, **env))
        # A session of its own: the teardown ends runuser and what runs under it at once.
        process = subprocess.Popen(
            line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.started.append(process)
        return process

    def hold(self, user: User | None, seconds: float = 60) -> subprocess.Popen:
        """``user`` runs ``run -n 1 -- python HOLD seconds`` and holds one core. Processes
        pinned by others on this shared machine are ignored: the registry decides here."""
        hold = self.script("hold.py", HOLD)
        python = self.python.executable
        run_args = ("--other-pins", "ignore")
        return self.start(
            user, "-m", "pinbackend", "run", "-n", "1", *run_args, "--", python, hold, str(seconds)
        )

    def init(self) -> None:
        result = self.cli(None, "host", "init")
        assert result.returncode == 0, result.stderr

    def status(self, user: User | None) -> dict:
        result = self.cli(user, "host", "status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def first_line(process: subprocess.Popen, timeout: float = 30) -> dict:
    """The JSON line a HOLD command prints first (its pid and CPUs)."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 0.1)[0]:
            line = process.stdout.readline()
            if line:
                return json.loads(line)
            break
    process.kill()
    raise AssertionError(f"no report from {process.args}: {process.communicate()[1]}")


@pytest.fixture(scope="module")
def alice(python_for_users):
    with unix_user("a") as user:
        yield user


@pytest.fixture(scope="module")
def bob(python_for_users):
    with unix_user("b") as user:
        yield user


@pytest.fixture
def site(python_for_users, alice, bob):
    root = world_folder()
    homes = {user.name: private_folder(root, user) for user in (alice, bob)}
    homes[None] = root / "root-home"
    homes[None].mkdir(mode=0o700)
    built = Site(root, python_for_users, root / "host", homes)
    try:
        yield built
    finally:
        for process in built.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        shutil.rmtree(root, ignore_errors=True)
