"""The lifecycle's behaviours, each tested once over every front door it applies to.

Clamp, wait, share, error, the claim timeout, idle release, an owner's death and a failed
claim. Every case runs the front door for real (``tests/_front_doors.py``: joblib's process
pools and pinned threads, the runner's Pool, ProcessPoolExecutor and ThreadPool, ``run -n``
and ``run --cores``, a Dask LocalCluster pinned by the plugin or by the preload) beside a
real neighbour job that leases cores as any job does, and reads what its workers run on
from inside their tasks. Sizes are this machine's own core count: N cores, the neighbour
holding the first one (or all of them).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import psutil
import pytest
from _front_doors import (
    ALLOWED,
    CORES,
    DASK,
    FRONT_DOORS,
    JOBLIB,
    POOLS,
    PROCESS_POOLS,
    RUN,
    THREADS,
    Claimant,
    Neighbour,
    assert_pinned,
    cpus_of,
    dask_lines,
    python_warnings,
    run_door,
    wait_until,
)

from pinbackend.core.cpuset import format_cpu_list
from pinbackend.host.holders import list_leases
from pinbackend.host.leases import claim
from pinbackend.host.policy import count

N = len(CORES)
#: The neighbour's core in the tests where it holds one, and the cores left to the job.
FIRST = cpus_of(CORES[:1])
REST = ALLOWED - FIRST
#: A short claim timeout, so that bounded waits end quickly.
CLAIM_TIMEOUT = 1.0
#: Seconds a bounded wait may take beyond the claim timeout to reach the caller (starting
#: a worker and importing pinbackend on a busy 2-core machine).
SLACK = 15.0

#: Where the policy is not the runner's thread pools' business: they keep the size the
#: program asked for and run their threads on the cores that fit, whatever the policy
#: (docs/runner.md), so they neither wait, share nor refuse (their bounded wait, when no
#: core is free at all, is in the claim-timeout test).
POLICY_DOORS = [door for door in FRONT_DOORS if door != "runner-threadpool"]

pytestmark = [
    pytest.mark.slow,
    # A case takes 1-5 s on 2 cores; 120 s catches a hang with room for a loaded machine
    # (each wait for a child is bounded by CHILD_SECONDS too).
    pytest.mark.timeout(120),
    pytest.mark.skipif(N < 2, reason="needs 2 allowed physical cores (one for the neighbour)"),
]


def holder(neighbour: Neighbour) -> str:
    """How messages name the neighbour."""
    return f"by pid {neighbour.pid} ({Neighbour.command})"


def outcomes(result: dict) -> Counter:
    """A Dask cluster's workers by outcome (pinned, shared, closed, refused)."""
    return Counter(row["outcome"] for row in result["rows"])


def spelled(door: str, keyword: str, flag: str) -> str:
    """A remedy as the front door's user spells it: a keyword, or the runner's flag."""
    return flag if door.startswith(("runner-", "run-")) else keyword


def waits_announced(claimant: Claimant) -> list[str]:
    return python_warnings(claimant, "WaitingForCoresWarning")


@pytest.mark.parametrize("door", [*POOLS, *DASK])
def test_clamp_runs_the_workers_that_fit_around_another_job(door):
    """One worker more than the host has cores, beside a job holding one core: as many as
    fit run, none on the other job's core, and the user is told once.

    Not ``run``: it pins one process, which cannot run with fewer workers; where its cores
    are held it waits (the claim-timeout test). The runner's thread pools keep the size the
    program asked for: their threads take turns on the cores that fit.
    """
    asked, fit = N + 1, N - 1
    with Neighbour(FIRST) as neighbour:
        result, claimant = run_door(door, asked, claim_timeout=CLAIM_TIMEOUT)
    assert result["error"] is None, claimant.stderr[-3000:]
    if door == "runner-threadpool":
        slots = assert_pinned(door, result["workers"], asked, shared=True)
    else:
        slots = assert_pinned(door, result["workers"], fit)
    assert cpus_of(slots) <= REST
    if door in DASK:
        assert outcomes(result) == {"pinned": fit, "closed": asked - fit}
        (warning,) = dask_lines(claimant, "WARNING")
        assert "the workers beyond them are closed (oversubscribe='clamp')" in warning
        assert holder(neighbour) in warning and not dask_lines(claimant, "ERROR")
    elif door == "runner-threadpool":
        assert python_warnings(claimant, "PoolResizedWarning") == []
    else:
        (note,) = python_warnings(claimant, "PoolResizedWarning")
        assert f"runs {count(fit, 'worker')} instead of {asked}" in note
        assert f"CPUs {format_cpu_list(REST)}" in note


@pytest.mark.parametrize("door", POLICY_DOORS)
def test_wait_waits_without_a_bound_until_every_worker_fits(door):
    """``oversubscribe="wait"`` beside a job holding one core: nothing runs on fewer cores;
    past the claim timeout it still waits, and once the job ends every worker runs, on
    every core. Pools say once that they wait."""
    with (
        Neighbour(FIRST) as neighbour,
        Claimant(door, N, policy="wait", claim_timeout=CLAIM_TIMEOUT / 2) as claimant,
    ):
        claimant.ready()
        if door in POOLS:
            assert claimant.next("warning") is not None, claimant.stderr[-3000:]
        time.sleep(1.5 * CLAIM_TIMEOUT)  # three claim timeouts
        assert claimant.process.poll() is None, claimant.stderr[-3000:]
        released = neighbour.release()
        result = claimant.result()
    assert result["error"] is None, claimant.stderr[-3000:]
    slots = assert_pinned(door, result["workers"], 1 if door in RUN else N)
    assert cpus_of(slots) == ALLOWED
    assert min(report["started"] for report in result["workers"]) >= released
    if door in POOLS:
        (waiting,) = waits_announced(claimant)
        assert holder(neighbour) in waiting and "waiting for other jobs to end" in waiting
    if door in DASK:
        assert outcomes(result) == {"pinned": N}


@pytest.mark.parametrize("door", POLICY_DOORS)
def test_share_runs_on_another_jobs_cores_with_one_warning(door):
    """``oversubscribe="share"`` while another job holds every core: the workers run at
    once, each pinned and capped to one slot of the other job's cores, and the user is
    warned once. Sharers hold no lock, so they cannot see each other's choice: each worker
    process picks the slot that the fewest leases touch, two of them maybe the same one."""
    with Neighbour(ALLOWED):
        result, claimant = run_door(door, N, policy="share", claim_timeout=CLAIM_TIMEOUT)
    assert result["error"] is None, claimant.stderr[-3000:]
    shared = door not in THREADS  # a thread pool's caller plans its threads' shares together
    assert_pinned(door, result["workers"], 1 if door in RUN else N, shared=shared)
    if door in DASK:
        assert outcomes(result) == {"shared": N}
        warnings_ = dask_lines(claimant, "WARNING")
        assert len(warnings_) == 1, "\n".join(warnings_)
        (warning,) = warnings_
        assert "the workers beyond them share cores (oversubscribe='share')" in warning
    elif door in RUN:
        sharing = [line for line in claimant.stderr.splitlines() if "sharing CPUs" in line]
        assert len(sharing) == 1 and "(--oversubscribe share)" in sharing[0], claimant.stderr
    else:
        (warning,) = python_warnings(claimant, "SharedCoresWarning")
        assert f"its {N} worker(s) share CPUs {format_cpu_list(ALLOWED)} with other jobs" in warning


@pytest.mark.parametrize("door", POLICY_DOORS)
def test_error_refuses_what_does_not_fit_naming_the_holder(door):
    """``oversubscribe="error"`` asking for every core beside a job holding one: a pool and
    ``run --cores`` refuse at once, naming who holds the cores and the remedies; a Dask
    cluster runs the workers that fit and refuses the others. A process pinning itself
    (``run -n``, a Dask worker) has no fewer workers to run: it waits as under clamp, up to
    the claim timeout, then refuses."""
    with Neighbour(FIRST) as neighbour:
        result, claimant = run_door(door, N, policy="error", claim_timeout=CLAIM_TIMEOUT)
    error = result["error"]
    if door in DASK:
        assert outcomes(result) == {"pinned": N - 1, "refused": 1}
        assert (error or "").startswith("PinRefused: ") == (door == "dask-plugin"), error
        (line,) = dask_lines(claimant, "ERROR")
        assert "refuses to start" in line and "(oversubscribe='error')" in line
        assert holder(neighbour) in line and not dask_lines(claimant, "WARNING")
        return
    assert error is not None and holder(neighbour) in error, claimant.stderr[-3000:]
    assert result["workers"] == []
    if door == "run-n":
        assert "none freed up within 1s" in error
    elif door == "run-cores":
        assert error == (
            f"pinbackend: error: CPUs {format_cpu_list(FIRST)} are held {holder(neighbour)}. "
            "Pick other CPUs, wait for those jobs, or allow sharing"
        )
    else:
        assert error.startswith("PlanError: ") and f"asks for {N} workers" in error
        workers = spelled(door, f"n_jobs={N - 1}", f"-p {N - 1}")
        policies = [
            spelled(door, f"oversubscribe='{name}'", f"--oversubscribe {name}")
            for name in ("clamp", "wait", "share")
        ]
        assert error.endswith(f"use {workers}, or {policies[0]}, {policies[1]} or {policies[2]}")
        assert result["seconds"] < CLAIM_TIMEOUT  # at once: no wait


@pytest.mark.parametrize("door", FRONT_DOORS)
def test_a_claim_waits_the_claim_timeout_then_fails_naming_the_holder(door):
    """Under clamp (the default), while another job holds every core: the claimant waits up
    to the claim timeout (a pool says once that it waits), then gives up with who holds
    the cores and the remedies; a Dask worker closes, with one warning per host."""
    with Neighbour(ALLOWED) as neighbour:
        result, claimant = run_door(door, N, claim_timeout=CLAIM_TIMEOUT)
    assert result["workers"] == []
    if door in DASK:
        assert result["error"] is None and outcomes(result) == {"closed": N}
        for row in result["rows"]:
            assert row["note"].startswith(f"no worker x 1 thread fits this host's {N} cores")
            assert holder(neighbour) in row["note"]
        (warning,) = dask_lines(claimant, "WARNING")
        assert "the workers beyond them are closed" in warning
        assert result["seconds"] >= CLAIM_TIMEOUT
        return
    error = result["error"]
    assert error is not None and holder(neighbour) in error, claimant.stderr[-3000:]
    assert "none freed up within 1s" in error and "waiting" not in error
    assert CLAIM_TIMEOUT <= result["seconds"] < CLAIM_TIMEOUT + SLACK
    if door in POOLS:
        assert error.startswith("ClaimFailed: ")  # the one claim failure
        (waiting,) = waits_announced(claimant)
        assert holder(neighbour) in waiting
        if door != "runner-threadpool":  # it names joblib's keywords (see the report)
            timeout = spelled(door, "claim_timeout", "--claim-timeout")
            share = spelled(door, "oversubscribe='share'", "--oversubscribe share")
            assert error.endswith(
                f"within 1s ({timeout}); use {share}, a longer {timeout}, or free some cores"
            )
    else:
        assert error.startswith("pinbackend: error: ")


@pytest.mark.parametrize("door", JOBLIB)
def test_an_idle_pool_gives_its_cores_back_and_takes_them_again(door):
    """Once a call has returned, its pool's cores are free for another job within moments
    (joblib's idle workers give their lease back and are unpinned, its pinned threads end),
    and the next call is pinned again, on the same warm worker processes.

    Not the runner's pools: a multiprocessing pool's workers keep their slots while the pool
    lives (its end gives them back). Nor a Dask worker or ``run``: a slot for their life.
    """
    with Claimant(door, N, extra=["--again"]) as claimant:
        first = claimant.result()
        assert first["error"] is None, claimant.stderr[-3000:]
        assert_pinned(door, first["workers"], N)
        begun = time.monotonic()
        with claim(ALLOWED, timeout=10, command="another job"):
            took = time.monotonic() - begun
            released = {
                pid: {tuple(sorted(os.sched_getaffinity(thread.id))) for thread in threads}
                for pid, threads in _threads_of(first["workers"], door).items()
            }
        claimant.again()
        second = claimant.result()
    assert took < 5, took
    # Released, a worker process is back on the CPUs it started with, every one.
    assert all(masks == {tuple(sorted(ALLOWED))} for masks in released.values()), released
    assert second["error"] is None, claimant.stderr[-3000:]
    assert_pinned(door, second["workers"], N)
    if door == "joblib":
        assert {r["pid"] for r in second["workers"]} == {r["pid"] for r in first["workers"]}


def _threads_of(reports: list[dict], door: str) -> dict[int, list]:
    """The threads of each worker process (none for thread workers: their pool has ended)."""
    if door != "joblib":
        return {}
    return {pid: psutil.Process(pid).threads() for pid in {r["pid"] for r in reports}}


def _workers_of(pid: int, count_: int) -> list[psutil.Process]:
    """The worker processes of the program ``pid``, once ``count_`` of them started."""
    program = psutil.Process(pid)

    def workers() -> list[psutil.Process]:
        found = []
        for child in program.children(recursive=True):
            try:
                if "resource_tracker" not in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
        return found

    wait_until(lambda: len(workers()) >= count_, what=f"{count_} workers to start")
    return workers()


@pytest.mark.parametrize("door", [*PROCESS_POOLS, *RUN, *DASK])
def test_a_claimants_death_frees_its_cores_and_leaves_no_process(door):
    """SIGKILL: a pool's owner takes its workers with it, those running a task on their
    slot and those still waiting for one, and every lease goes; a ``run`` command's lease
    goes with it; a Dask worker's cores are free at once for the worker its nanny starts
    instead.

    Not the thread pools: their threads die with the process that leased their cores.
    """
    if door in DASK:
        with Claimant(door, N, extra=["--kill-one"]) as claimant:
            before = claimant.result()
            claimant.again()  # one worker killed; its nanny replaces it
            after = claimant.result()
        killed = {r["pid"] for r in before["workers"]} - {r["pid"] for r in after["workers"]}
        assert len(killed) == 1
        slots = assert_pinned(door, after["workers"], N)
        assert cpus_of(slots) == ALLOWED and outcomes(after)["pinned"] == N
        assert after["leases"] == sorted(r["pid"] for r in after["workers"])
        return
    if door in RUN:
        with Claimant(door, 1, extra=["--again"]) as claimant:
            assert_pinned(door, claimant.result()["workers"], 1)
            assert [info.pid for info in list_leases(scope=None)] == [claimant.process.pid]
            claimant.process.send_signal(signal.SIGKILL)
            claimant.process.wait(30)
            wait_until(lambda: not list_leases(scope=None), 2, "the kernel to drop the lease")
        return
    # The first core is held by the program's own exiting worker: one new worker waits to
    # claim it, the others run tasks that never end, pinned, holding their leases.
    extra = ["--hold-own", format_cpu_list(FIRST), "--block"]
    with Claimant(door, N, claim_timeout=60, extra=extra) as claimant:
        claimant.ready()
        workers = _workers_of(claimant.process.pid, N)
        program = claimant.process.pid
        wait_until(
            lambda: len([i for i in list_leases(scope=None) if i.pid != program]) == N - 1,
            what="the workers that fit to hold their cores",
        )
        claimant.process.send_signal(signal.SIGKILL)
        claimant.process.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], alive
    wait_until(lambda: not list_leases(scope=None), 5, "every lease to go")


@pytest.mark.parametrize("door", PROCESS_POOLS)
def test_a_failed_claim_reaches_the_caller_as_itself(door):
    """A pool's workers cannot claim the slots planned for them (its own earlier worker,
    still exiting, holds every core): the caller gets the claim error itself, naming the
    holder, within about the claim timeout, and its next pool runs pinned once the cores
    are free.

    Not the thread pools: their caller claims every share itself. Not ``run`` nor a Dask
    worker: a process pinning itself claims what it decided (deciding again when another
    process was faster); its only claim failure is the end of its wait (claim-timeout test).
    """
    extra = ["--hold-own", format_cpu_list(ALLOWED), "--again"]
    with Claimant(door, N, claim_timeout=CLAIM_TIMEOUT, extra=extra) as claimant:
        failed = claimant.result()
        claimant.again()  # the earlier worker has gone now
        again = claimant.result()
    error = failed["error"]
    assert error is not None, claimant.stderr[-3000:]
    assert error.startswith(f"LeaseConflict: none of the {N} planned core sets is free"), error
    assert f"by pid {claimant.process.pid} (an earlier worker)" in error
    assert failed["seconds"] < CLAIM_TIMEOUT + SLACK
    assert again["error"] is None, claimant.stderr[-3000:]
    assert cpus_of(assert_pinned(door, again["workers"], N)) == ALLOWED
