"""Pools whose workers cannot claim their slots stop, and the program gets the claim error.

Without this, ``multiprocessing.Pool`` replaces such a worker without limit and ``map`` never
returns. Each test runs ``tests/scripts/claim_fails.py`` under the runner while a holder
process leases the CPUs for the program (as a worker of an earlier pool that has not exited
yet would): the runner plans over them, and the workers wait ``--claim-timeout`` in vain.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from _helpers import PYTHON

SCRIPT = str(Path(__file__).parent / "scripts" / "claim_fails.py")
ALLOWED = sorted(os.sched_getaffinity(0))
METHODS = ("fork", "spawn", "forkserver")
CLAIM_TIMEOUT = 1.0
#: Seconds a failed claim may take to reach the caller beyond the claim timeout (spawning
#: a worker and importing pinbackend on a busy 2-core machine).
SLACK = 15.0
LEASE_CONFLICT = "pinbackend.host.leases.LeaseConflict"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs"),
]


def run_script(kind: str, method: str) -> dict:
    """Run the script under the runner; its JSON report (it has a watchdog of its own)."""
    timeout = str(CLAIM_TIMEOUT)
    result = subprocess.run(
        [PYTHON, "-m", "pinbackend", "--claim-timeout", timeout, SCRIPT, kind, method, timeout],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report.get("hung"), f"the program hung; {report['started']} processes started"
    assert result.returncode == 0, result.stderr[-3000:]
    return report


def assert_claim_error(outcome: dict, holder: int) -> None:
    """The caller got the worker's LeaseConflict itself, with the worker's traceback."""
    assert outcome.get("error") == LEASE_CONFLICT, outcome
    assert "none of the 2 planned core sets is free" in outcome["message"]
    assert holder in outcome["holders"]  # the exception's own fields survived the trip
    assert outcome["cause"].startswith("RemoteTraceback") and "join_pool" in outcome["cause"]


@pytest.mark.parametrize("method", METHODS)
def test_pool_stops_and_every_call_raises_the_claim_error(method):
    report = run_script("pool", method)
    holder = report["holder"]
    for call in ("map", "apply", "imap"):
        assert_claim_error(report[call], holder)
    # Within about the claim timeout, and the calls after the first at once.
    assert report["map"]["seconds"] < CLAIM_TIMEOUT + SLACK
    assert report["apply"]["seconds"] < SLACK and report["imap"]["seconds"] < SLACK
    # Two workers started, failed, and none replaced them, then or later.
    assert report["started"] == report["started_later"] == 2
    assert "error" not in report["join"]  # close() and join() end normally


@pytest.mark.parametrize("method", METHODS)
def test_process_pool_executor_futures_raise_the_claim_error_itself(method):
    report = run_script("executor", method)
    assert_claim_error(report["map"], report["holder"])
    assert report["map"]["seconds"] < CLAIM_TIMEOUT + SLACK
    # The executor is broken as usual; submit's BrokenProcessPool says why.
    assert report["submit"]["error"] == "concurrent.futures.process.BrokenProcessPool"
    assert "could not claim its cores (LeaseConflict:" in report["submit"]["message"]
    assert report["started"] == report["started_later"] <= 2
    assert "error" not in report["join"]


def test_a_pool_with_one_failed_claim_runs_no_more_tasks_on_its_other_worker():
    # One CPU is held: one worker claims the other and is ready; the second worker gives up.
    # From then on the pool runs nothing new: the ready worker runs the task it was waiting
    # for (each takes 0.2 s) and then waits behind the stand-in, which answers all the rest.
    tasks = run_script("mixed", "fork")["tasks"]
    succeeded = [t for t in tasks if "value" in t]
    assert len(succeeded) <= 2, tasks
    assert all(t.get("error") == LEASE_CONFLICT for t in tasks if t not in succeeded), tasks
