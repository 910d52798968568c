"""Real Unix users for the shared-machine tests: made with ``useradd``, always removed, and a
Python they may run.

The tests run as root (CI does, on a clean clone), make two throw-away users and run
pinbackend as each of them with ``runuser -u USER -- PYTHON ...``. The interpreter the tests
run under is often out of other users' reach (pyenv under ``/root``, mode 0700; a clone
under ``/root``): :class:`SharedPython` makes it reachable without copying it, by
bind-mounting the folders another user cannot enter (the interpreter's prefix, the
virtual environment's site-packages, the checkout) under a world-readable temporary folder.
Everything is undone at the end: processes of the users (by pid), the users, the mounts.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import pinbackend

#: Folder names under which the mounts and each test's files live (world-readable).
_PREFIX = "pinbackend-users-"


@dataclass(frozen=True)
class User:
    """A throw-away Unix user: its name, uid and primary group."""

    name: str
    uid: int
    gid: int


def require_root() -> None:
    """Skip unless the tests can add users and run commands as them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to add users (useradd) and run as them (runuser); CI is root")
    for tool in ("useradd", "userdel", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}, which this host does not have")


@contextlib.contextmanager
def unix_user(tag: str):
    """A new user (no home, no login shell), removed with its processes at the end."""
    require_root()
    name = f"pb{tag}{secrets.token_hex(3)}"
    command = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
    subprocess.run([*command, name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        with contextlib.suppress(KeyError):
            _end_processes_of(pwd.getpwnam(name).pw_uid)
        subprocess.run(["userdel", name], capture_output=True)


def _end_processes_of(uid: int) -> None:
    """Kill, one by one, what the test started as this user (it owns nothing else)."""
    left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=5)


def _reachable(path: Path) -> bool:
    """Whether a user who is neither its owner nor in its group can read ``path``."""
    path = Path(os.path.realpath(path))
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        return all(os.stat(folder).st_mode & stat.S_IXOTH for folder in path.parents)
    except OSError:
        return False


class SharedPython:
    """This test run's interpreter and packages, runnable by any user (see module docstring)."""

    def __init__(self) -> None:
        self.root = world_folder()
        self._mounts: list[Path] = []
        base = Path(sys.base_prefix)
        executable = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
        prefix = self._expose(base)
        self.executable = str(prefix / executable.relative_to(base))
        # A shared libpython is found through the build's run path, under the old prefix;
        # libraries wheels put in the environment's own lib (tbb4py's libtbb) through the
        # variable, since their run path leads out of the exposed site-packages.
        libraries = [prefix / "lib"]
        if sys.prefix != sys.base_prefix and os.path.isdir(Path(sys.prefix) / "lib"):
            libraries.append(self._expose(Path(sys.prefix) / "lib"))
        self.library_path = os.pathsep.join(map(str, libraries))
        package_root = Path(pinbackend.__file__).resolve().parent.parent
        paths = [package_root] + [
            Path(entry)
            for entry in sys.path
            if entry and os.path.isdir(entry) and not entry.startswith(sys.base_prefix)
        ]
        self.python_path = os.pathsep.join(str(self._expose(path)) for path in paths)

    def _expose(self, path: Path) -> Path:
        """``path``, or a bind mount of it that any user can reach."""
        if _reachable(path) and _reachable(path / "."):
            return path
        target = self.root / f"mount-{len(self._mounts)}"
        target.mkdir(mode=0o755)
        result = subprocess.run(["mount", "--bind", str(path), str(target)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot bind-mount {path} for other users: {result.stderr.decode()}")
        self._mounts.append(target)
        return target

    def env(self, home: Path, extra: dict[str, str]) -> dict[str, str]:
        """A clean environment for a user's Python: this interpreter, pinbackend, ``extra``."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LD_LIBRARY_PATH": self.library_path,
            "PYTHONPATH": self.python_path,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONFAULTHANDLER": "1",
            **extra,
        }

    def command(self, user: User | None, args: list[str], env: dict[str, str]) -> list[str]:
        """Run ``PYTHON args`` as ``user`` (as root for None) with exactly ``env``."""
        line = ["env", "-i", *(f"{key}={value}" for key, value in env.items())]
        line += [self.executable, *args]
        return line if user is None else ["runuser", "-u", user.name, "--", *line]

    def close(self) -> None:
        """Unmount and remove what :meth:`__init__` made."""
        for target in reversed(self._mounts):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)
        self._mounts.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def world_folder() -> Path:
    """A new root-owned folder under /tmp that every user may enter (mode 0755)."""
    folder = tempfile.mkdtemp(prefix=_PREFIX, dir="/tmp")
    os.chmod(folder, 0o755)
    return Path(folder)


def private_folder(parent: Path, user: User) -> Path:
    """A folder of ``user``'s own (mode 0700) in ``parent``: their per-user registry, home."""
    folder = parent / user.name
    folder.mkdir(mode=0o700)
    os.chown(folder, user.uid, user.gid)
    return folder


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def python_for_users():
    """This test run's interpreter, runnable by the throw-away users, for one test module."""
    shared = SharedPython()
    try:
        yield shared
    finally:
        shared.close()
