"""Jobs side by side on one machine: a reserved daemon core, disjoint jobs, full machines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _helpers import PYTHON, blas_threads, pinbackend_cli, pinbackend_started, thread_masks

from pinbackend.host.holders import list_leases

SCRIPTS = Path(__file__).parent / "scripts"
ALLOWED = sorted(os.sched_getaffinity(0))
REPORT_AND_WAIT = (
    "import json, sys; from pinbackend.diagnostics import process_report; "
    "print(json.dumps(process_report()), flush=True); sys.stdin.read()"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs"),
]


@contextlib.contextmanager
def started(*args: str):
    """Start ``python -m pinbackend ARGS`` whose program prints one JSON line then waits on
    stdin; yield the process and that line, parsed."""
    with pinbackend_started(*args) as (process, line):
        yield process, json.loads(line)


def run_job(*args: str, check: bool = True):
    """Run a runner job to its end; parse its last stdout line when it succeeded."""
    result = pinbackend_cli(*args, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
        result.data = json.loads(result.stdout.strip().splitlines()[-1])
    return result


def workers_of(data: dict) -> list[dict]:
    return list({r["pid"]: r for r in data["workers"]}.values())


def test_a_pinned_job_never_touches_the_daemons_core_which_is_free_after_sigkill():
    daemon_cpu = ALLOWED[-1]
    rest = [cpu for cpu in ALLOWED if cpu != daemon_cpu]
    daemon_args = ["run", "--cores", str(daemon_cpu), "--", PYTHON, "-c", REPORT_AND_WAIT]
    with started(*daemon_args) as (daemon, daemon_report):
        assert thread_masks(daemon_report) == {(daemon_cpu,)}
        job = run_job("--pin-main", str(SCRIPTS / "pools.py"), "pool", "spawn").data
        processes = [job["main"], *workers_of(job)]
        for process in processes:
            assert daemon_cpu not in process["affinity"]
            # Not one thread of the job may run on the daemon's core.
            assert all(daemon_cpu not in cpus for cpus in process["threads"].values())
        assert sorted(tuple(w["affinity"]) for w in workers_of(job)) == [(c,) for c in rest]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
    # The kernel dropped the daemon's lock with the process: the core is free at once.
    assert list_leases(scope=None) == []
    job = run_job(str(SCRIPTS / "pools.py"), "pool", "spawn").data
    assert sorted(tuple(w["affinity"]) for w in workers_of(job)) == [(c,) for c in ALLOWED]


def test_two_jobs_side_by_side_get_disjoint_cores_and_status_names_the_job():
    first_args = ["--cores-per-worker", "1", "-p", "1", str(SCRIPTS / "hold_pool.py"), "spawn"]
    with started(*first_args) as (first, reports):
        (first_worker,) = list({r["pid"]: r for r in reports}.values())
        status = json.loads(pinbackend_cli("status", "--json", check=True).stdout)
        assert [job["pid"] for job in status["jobs"]] == [first.pid]
        assert status["jobs"][0]["options"]["processes"] == 1
        (lease,) = status["leases"]
        assert (lease["pid"], lease["job"]) == (first_worker["pid"], first.pid)
        assert f"{first.pid}" in pinbackend_cli("status", check=True).stdout
        second = run_job(str(SCRIPTS / "pools.py"), "processpool", "spawn").data
        (second_worker,) = workers_of(second)
        assert set(first_worker["affinity"]).isdisjoint(second_worker["affinity"])
        assert set(first_worker["affinity"]) | set(second_worker["affinity"]) == set(ALLOWED)
        assert blas_threads(second_worker) == {1}
    assert json.loads(pinbackend_cli("status", "--json", check=True).stdout)["jobs"] == []


def test_on_a_full_machine_clamp_waits_the_claim_timeout_then_fails_clearly_and_share_warns():
    with started(str(SCRIPTS / "hold_pool.py"), "spawn") as (holder, _):
        args = [str(SCRIPTS / "pools.py"), "pool", "spawn"]
        begun = time.monotonic()
        refused = run_job("--claim-timeout", "1", *args, check=False)
        assert refused.returncode == 1
        assert time.monotonic() - begun >= 1.0
        assert refused.stderr.count("WaitingForCoresWarning") == 1
        assert "ClaimFailed" in refused.stderr  # the one claim failure: a PlanError too
        assert (
            "none freed up within 1s (--claim-timeout); use --oversubscribe share, a "
            "longer --claim-timeout, or free some cores" in refused.stderr
        )
        assert f"by pid {holder.pid}" not in refused.stderr  # workers hold them, not the job
        shared = run_job("--oversubscribe", "share", *args)
        assert "SharedCoresWarning" in shared.stderr
        for worker in workers_of(shared.data):
            assert thread_masks(worker) == {tuple(worker["affinity"])}


def test_wait_policy_waits_for_the_other_job_to_end():
    with started(str(SCRIPTS / "hold_pool.py"), "spawn") as (holder, _):
        command = ["-m", "pinbackend", "--oversubscribe", "wait", str(SCRIPTS / "pools.py")]
        waiting = subprocess.Popen(
            [PYTHON, *command, "pool", "spawn"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # It says that it waits, and it does: it cannot have finished while we hold.
        assert "WaitingForCoresWarning" in waiting.stderr.readline()
        assert waiting.poll() is None
        holder.stdin.close()
        holder.wait(timeout=60)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    workers = workers_of(json.loads(out.strip().splitlines()[-1]))
    assert sorted(tuple(w["affinity"]) for w in workers) == [(c,) for c in ALLOWED]
