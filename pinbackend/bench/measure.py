"""Run one measurement in its own interpreter, bounded by a timeout, and read its numbers.

The measurement process leads a new process group, so it and every process it starts
(pool workers, Dask nannies) can be ended together: past its timeout the whole group is
killed with SIGKILL and the run is recorded as ``timeout`` (the table shows "> N s"), never
waited for. Killed workers' core leases go with them (the kernel drops their locks).

A new group, not a new session: with the kernel's autogroup scheduling (on by default on
desktop and many server kernels) each session shares CPU time as one unit, so a measurement
in a session of its own would not compete with a neighbour as a user's job started from a
shell does.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping

from ._child import PROTOCOL

__all__ = ["STATUSES", "run_measurement"]

#: ``ok``; ``timeout`` (the timed part ran past its limit); ``failed`` (an error, a crash,
#: or a setup that did not finish); ``skipped`` (not run: a known hang timed out before);
#: ``unavailable`` (a package is missing).
STATUSES = ("ok", "timeout", "failed", "skipped", "unavailable")

# Python 3.11 has process_group=; before, setpgid in the child before exec does the same.
_NEW_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}

#: Seconds a measurement may take after it sent its result (closing pools and clusters).
_EXIT_GRACE = 30.0


def run_measurement(
    command: list[str],
    spec: Mapping,
    *,
    env: Mapping[str, str],
    timeout: float,
    setup_timeout: float,
    on_ready: Callable[[], None] | None = None,
) -> dict:
    """Run ``command + [json(spec)]``; return ``{"status", "time", ...}``.

    ``setup_timeout`` bounds the start and setup (imports, data, warm-up), ``timeout`` the
    timed part, from the ``ready`` line on; ``on_ready`` is called when that line comes.
    """
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            [*command, json.dumps(dict(spec))],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            **_NEW_GROUP,
        )
        try:
            outcome = _follow(process, timeout, setup_timeout, on_ready)
        except BaseException:
            _kill_group(process)
            raise
        _finish(process)
        if outcome.get("status") == "failed" and "reason" not in outcome:
            stderr.seek(0)
            outcome["reason"] = _last_error(stderr.read(), process.returncode)
    return outcome


def _follow(process: subprocess.Popen, timeout: float, setup_timeout: float, on_ready) -> dict:
    """Read protocol lines until the result comes, the process ends, or time runs out."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + setup_timeout
    ready = False
    pending = b""
    marker = PROTOCOL.encode() + b" "
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(process)
                if ready:
                    return {"status": "timeout", "time": None, "timeout": timeout}
                return {
                    "status": "failed",
                    "time": None,
                    "reason": f"setup did not finish within {setup_timeout:g} s",
                }
            if not selector.select(min(left, 0.25)):
                if process.poll() is not None:
                    # Ended without a result; its workers may still hold stdout open.
                    return {"status": "failed", "time": None}
                continue
            # Raw reads, not readline(): a task printing half a line must not block us.
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:  # stdout closed everywhere: it ended without a result
                return {"status": "failed", "time": None}
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not line.startswith(marker):
                    continue
                kind, _, payload = line[len(marker) :].decode().partition(" ")
                if kind == "ready":
                    ready = True
                    deadline = time.monotonic() + timeout
                    if on_ready is not None:
                        on_ready()
                elif kind == "result":
                    return {"status": "ok", **json.loads(payload)}
    finally:
        selector.close()


def _finish(process: subprocess.Popen) -> None:
    """Let the measurement exit, then make sure nothing of its process group survives."""
    try:
        if hasattr(os, "waitid"):
            # Wait without reaping: while the leader is a zombie its pid, which is the group
            # id, cannot be reused, so killing the group cannot hit a stranger.
            deadline = time.monotonic() + _EXIT_GRACE
            while time.monotonic() < deadline:
                if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG):
                    break
                time.sleep(0.02)
        else:  # pragma: no cover - not Linux
            process.wait(_EXIT_GRACE)
    except (ChildProcessError, subprocess.TimeoutExpired):
        pass
    _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _last_error(stderr: str, returncode: int | None) -> str:
    """The most telling line of a failed measurement's stderr (the exception, if any)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and ("Error" in line or ":" in line):
            return line[:300]
    if lines:
        return lines[-1][:300]
    return f"exited with status {returncode} without a result"
