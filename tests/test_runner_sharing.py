"""Jobs side by side on one machine: a reserved daemon core, disjoint jobs.

A job on a full machine (clamp's claim timeout, share, wait) is in test_behaviours."""

from __future__ import annotations

import contextlib
import json
import os
import signal
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
