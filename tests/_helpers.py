"""Helpers shared by the process tests: run Python in a child and read what it reports."""

from __future__ import annotations

import contextlib
import ctypes.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

PYTHON = sys.executable

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


def run_python(code: str, *, env: dict | None = None, timeout: float = 60, check: bool = True):
    """Run ``code`` in a fresh interpreter; return the CompletedProcess (text mode)."""
    result = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"child failed ({result.returncode}):\n{result.stderr}")
    return result


def last_json(stdout: str):
    """The last line of a child's stdout, parsed as JSON."""
    return json.loads(stdout.strip().splitlines()[-1])


def pinbackend_cli(*args: str, timeout: float = 60, env: dict | None = None, check: bool = False):
    """Run ``python -m pinbackend ARGS`` and return the CompletedProcess."""
    result = subprocess.run(
        [PYTHON, "-m", "pinbackend", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pinbackend {' '.join(args)} failed:\n{result.stderr}")
    return result


@contextlib.contextmanager
def pinbackend_started(*args: str, timeout: float = 60):
    """Start ``python -m pinbackend ARGS`` whose program prints one line, then waits on stdin.

    Yields the process and that line; closing stdin ends the program.
    """
    with subprocess.Popen(
        [PYTHON, "-m", "pinbackend", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            yield process, line
        finally:
            if process.poll() is None:
                process.stdin.close()
            process.wait(timeout=timeout)


def blas_threads(report: dict) -> set[int]:
    """Thread counts of the BLAS pools in a process report."""
    return {p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "blas"}


def openmp_threads(report: dict) -> set[int]:
    """Thread caps of the OpenMP runtimes in a process report."""
    return {p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "openmp"}


def thread_masks(report: dict) -> set[tuple[int, ...]]:
    """Distinct CPU masks over every thread of a process report."""
    return {tuple(cpus) for cpus in report["threads"].values()}
