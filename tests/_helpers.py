"""Helpers shared by the process tests: run Python in a child and read what it reports."""

from __future__ import annotations

import contextlib
import ctypes.util
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PYTHON = sys.executable

#: Seconds a child has, after SIGABRT, to print its threads' stacks and exit. faulthandler
#: writes them from its signal handler at once, without the GIL; 5 s allows for a loaded
#: machine. A child still there is killed.
STACK_DUMP_SECONDS = 5.0


class ChildTimedOut(AssertionError):
    """A child ran past its timeout; the message carries its stderr, stacks included."""


def child_env(env: dict | None = None) -> dict[str, str]:
    """The test process's environment with ``env`` on top, and faulthandler enabled in every
    Python child (``PYTHONFAULTHANDLER``, inherited by its own children and by programs it
    execs): SIGABRT makes such a child print the stack of each of its threads."""
    return {"PYTHONFAULTHANDLER": "1", **os.environ, **(env or {})}


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _read_to_end(process: subprocess.Popen, seconds: float) -> tuple[str, str]:
    """What the child writes until its pipes close, waiting ``seconds`` at most (a
    grandchild that inherited them may keep them open): what came by then."""
    if process.stdin is not None and process.stdin.closed:
        process.stdin = None  # communicate() would flush it
    try:
        return process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired as partial:
        return _text(partial.stdout), _text(partial.stderr)


def _first_line(process: subprocess.Popen, timeout: float) -> str | None:
    """The first line the child writes to stdout ("" if it closes stdout first), or None if
    none came within ``timeout``. Reads the pipe itself: a blocked ``readline`` has no
    timeout."""
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0] + "\n"


def abort_child(process: subprocess.Popen, timeout: float) -> ChildTimedOut:
    """Stop a child that ran past ``timeout``: SIGABRT first, so that a Python child prints
    every thread's stack, SIGKILL if it is still there. Returns the error to raise, whose
    message holds the child's stderr (and the end of its stdout)."""
    process.send_signal(signal.SIGABRT)
    try:
        process.wait(STACK_DUMP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    stdout, stderr = _read_to_end(process, STACK_DUMP_SECONDS)
    command = shlex.join(str(arg) for arg in process.args)
    tail = f"\nthe end of its stdout:\n{stdout[-2000:]}" if stdout.strip() else ""
    return ChildTimedOut(
        f"child still running after {timeout:g} s (its timeout), stopped with SIGABRT "
        f"({command[:300]}); its stderr, with every thread's stack if it is Python:\n"
        f"{stderr}{tail}"
    )


def run_child(command: list[str], *, timeout: float, env: dict | None = None):
    """Run ``command`` to its end and return the CompletedProcess (text mode). A child still
    running at ``timeout`` is stopped by ``abort_child`` and raises ChildTimedOut."""
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(env),
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise abort_child(process, timeout) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


#: Code that makes sched_setaffinity fail with EPERM in this process, as in a locked-down
#: container; tests that run it are marked ``needs_seccomp``.
FORBID_AFFINITY = """
import ctypes, ctypes.util, errno
lib = ctypes.CDLL(ctypes.util.find_library("seccomp"))
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
context = lib.seccomp_init(0x7FFF0000)  # allow everything...
number = lib.seccomp_syscall_resolve_name(b"sched_setaffinity")
# ...except sched_setaffinity, which fails with EPERM as in a locked-down container.
assert lib.seccomp_rule_add(context, 0x00050000 | errno.EPERM, number, 0) == 0
assert lib.seccomp_load(context) == 0
"""
needs_seccomp = pytest.mark.skipif(
    ctypes.util.find_library("seccomp") is None, reason="needs libseccomp to forbid affinity"
)


#: The task of the fair-share tests' child scripts: keep a CPU busy for ``seconds``
#: (touching the file ``flag`` first, if given) and report ``[pid, CPUs, start, end]``, in
#: Unix time: comparable between processes. Prepend it to a script that calls ``spin``.
SPIN_TASK = """
import os, time
from pathlib import Path

def spin(seconds, flag=None):
    start = time.time()
    if flag:
        Path(flag).touch()
    while time.time() - start < seconds:
        pass
    return [os.getpid(), sorted(os.sched_getaffinity(0)), start, time.time()]
"""


def run_python(code: str, *, env: dict | None = None, timeout: float = 60, check: bool = True):
    """Run ``code`` in a fresh interpreter; return the CompletedProcess (text mode).

    A child still running at ``timeout`` is stopped and its threads' stacks are shown.
    """
    result = run_child([PYTHON, "-c", textwrap.dedent(code)], timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}):\n{result.stderr}")
    return result


def last_json(stdout: str):
    """The last line of a child's stdout, parsed as JSON."""
    return json.loads(stdout.strip().splitlines()[-1])


def pinbackend_cli(*args: str, timeout: float = 60, env: dict | None = None, check: bool = False):
    """Run ``python -m pinbackend ARGS`` and return the CompletedProcess.

    A child still running at ``timeout`` is stopped and its threads' stacks are shown.
    """
    result = run_child([PYTHON, "-m", "pinbackend", *args], timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"pinbackend {' '.join(args)} failed:\n{result.stderr}")
    return result


@contextlib.contextmanager
def pinbackend_started(*args: str, timeout: float = 60):
    """Start ``python -m pinbackend ARGS`` whose program prints one line, then waits on stdin.

    Yields the process and that line; closing stdin ends the program. ``timeout`` bounds
    the wait for the line and the wait for the program's end after stdin closed: a program
    still running then is stopped and its threads' stacks are shown.
    """
    with subprocess.Popen(
        [PYTHON, "-m", "pinbackend", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    ) as process:
        try:
            line = _first_line(process, timeout)
            if line is None:
                raise abort_child(process, timeout)
            assert line, _read_to_end(process, timeout)[1]
            yield process, line
        finally:
            if process.poll() is None:
                process.stdin.close()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise abort_child(process, timeout) from None


def blas_threads(report: dict) -> set[int]:
    """Thread counts of the BLAS pools in a process report."""
    return {p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "blas"}


def openmp_threads(report: dict) -> set[int]:
    """Thread caps of the OpenMP runtimes in a process report."""
    return {p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "openmp"}


def thread_masks(report: dict) -> set[tuple[int, ...]]:
    """Distinct CPU masks over every thread of a process report."""
    return {tuple(cpus) for cpus in report["threads"].values()}
