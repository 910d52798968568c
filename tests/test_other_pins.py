"""Processes pinned to part of the job's CPUs without a lease here (taskset, another user's
job, a container's cpuset) hold those CPUs while busy: every front door plans around them.

These tests use real processes pinned with ``taskset``; the two-user tests are in
tests/test_shared_machine.py. On 2 CPUs, one busy pinned process leaves the other CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time

import pytest
from _helpers import PYTHON, last_json, pinbackend_cli, run_python

from pinbackend.host.foreign import pinned_holders
from pinbackend.host.options import PinOptions
from pinbackend.host.view import survey

CPUS = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 allowed CPUs")
FIRST, SECOND = (CPUS + CPUS)[:2]
BUSY = "while True: pass"


@pytest.fixture(autouse=True)
def quiet_host():
    """These tests read what the whole host runs: they start once no other process is busy
    pinned to these CPUs (another test run on this machine, say), waiting up to 60 s."""
    deadline = time.monotonic() + 60
    while pinned_holders(frozenset(CPUS)):
        if time.monotonic() > deadline:
            busy = "; ".join(f"pid {i.pid} ({i.command})" for i in pinned_holders(frozenset(CPUS)))
            pytest.skip(f"other processes stay busy pinned to these CPUs: {busy}")
        time.sleep(0.5)


@contextlib.contextmanager
def pinned(cpu: int, code: str = BUSY):
    """A process pinned to ``cpu`` by taskset (holding no lease), running ``code``."""
    process = subprocess.Popen(["taskset", "-c", str(cpu), PYTHON, "-c", code])
    try:
        time.sleep(0.3)  # started, pinned and running
        yield process
    finally:
        process.kill()
        process.wait()


@needs_two_cpus
def test_a_busy_pinned_process_holds_its_cpu_an_idle_one_and_kernel_threads_do_not():
    with pinned(FIRST) as busy, pinned(SECOND, "import time; time.sleep(60)") as idle:
        holders = pinned_holders(frozenset(CPUS))
        found = {info.pid: info for info in holders}
        assert busy.pid in found and idle.pid not in found
        info = found[busy.pid]
        assert info.cores == {FIRST} and info.source == "affinity"
        assert info.uid == os.getuid() and "while True" in info.command
        assert abs(info.since - time.time()) < 30
        # Kernel threads (kworker/N, migration/N...) are pinned per CPU and are never holders.
        assert all(os.path.exists(f"/proc/{pid}/exe") for pid in found)
    assert busy.pid not in {info.pid for info in pinned_holders(frozenset(CPUS))}


@needs_two_cpus
def test_lease_holders_and_their_children_are_counted_by_their_leases_only():
    code = (
        "import subprocess, sys; "
        f"child = subprocess.Popen([sys.executable, '-c', {BUSY!r}]); "
        "print('ready', child.pid, flush=True); sys.stdin.read(); child.kill()"
    )
    with subprocess.Popen(
        [PYTHON, "-m", "pinbackend", "run", "--cores", str(FIRST), "--", PYTHON, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            line = holder.stdout.readline()
            assert line, holder.stderr.read()
            _, child = line.split()
            time.sleep(0.3)
            view = survey(PinOptions())
            assert {info.pid for info in view.leases} == {holder.pid}
            assert view.pinned == ()  # the holder and its busy child: its lease says it all
            assert {info.pid for info in pinned_holders(frozenset(CPUS))} >= {int(child)}
        finally:
            holder.stdin.close()
            holder.wait(30)


POOL_MASKS = """
import json, os, time
import pinbackend
from joblib import Parallel, delayed
def mask(i):
    time.sleep(0.3)  # every worker gets tasks
    return sorted(os.sched_getaffinity(0))
masks = Parallel(n_jobs=-1, backend="pinned", other_pins={policy!r})(
    delayed(mask)(i) for i in range(6))
print(json.dumps(sorted({{tuple(m) for m in masks}})))
"""


@needs_two_cpus
def test_a_pool_avoids_a_taskset_pinned_process_and_ignore_plans_as_before():
    with pinned(FIRST):
        avoid = last_json(run_python(POOL_MASKS.format(policy="avoid")).stdout)
        ignore = last_json(run_python(POOL_MASKS.format(policy="ignore")).stdout)
    assert avoid == [[SECOND]]
    assert [FIRST] in ignore


@needs_two_cpus
def test_run_takes_the_free_cpu_and_error_and_status_name_the_pinned_process():
    with pinned(FIRST) as busy:
        show = "import os; print(sorted(os.sched_getaffinity(0)))"
        result = pinbackend_cli("run", "-n", "1", "--", PYTHON, "-c", show)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"[{SECOND}]"
        code = (
            "import pinbackend\nfrom joblib import Parallel, delayed\n"
            f"Parallel(n_jobs={len(CPUS)}, backend='pinned', oversubscribe='error')"
            "(delayed(abs)(i) for i in range(2))"
        )
        refused = run_python(code, check=False)
        status = pinbackend_cli("status", "--json", check=True)
        text = pinbackend_cli("status", check=True).stdout
    assert refused.returncode != 0
    assert busy.pid in {info["pid"] for info in json.loads(status.stdout)["pinned"]}
    assert "busy processes pinned without a lease here" in text and str(busy.pid) in text
    assert f"pid {busy.pid} of user " in refused.stderr
    assert "pinned there by its CPU affinity (no lease here)" in refused.stderr


JOIN = """
import json, os, sys
from pinbackend.host.pool import PoolPlan
from pinbackend.host.worker import join_pool
slots = (frozenset({{{first}}}), frozenset({{{second}}}))
print("ready", flush=True)
sys.stdin.readline()
# A pool planned before the other process pinned itself: both slots looked free.
plan = PoolPlan(slots=slots, scope="", owner=os.getppid(), claim_timeout={timeout})
join_pool(plan)
print(json.dumps(sorted(os.sched_getaffinity(0))), flush=True)
"""


@needs_two_cpus
@pytest.mark.parametrize("other_started", ["before", "after"])
def test_a_worker_pinned_onto_an_older_pinned_process_moves_once_a_younger_one_stays(
    other_started,
):
    """Two jobs that read the host at the same instant both find it free: each looks again
    right after pinning, and the younger one gives way."""
    code = JOIN.format(first=FIRST, second=SECOND, timeout=0.0)
    with contextlib.ExitStack() as stack:
        if other_started == "before":
            stack.enter_context(pinned(FIRST))
            time.sleep(0.05)  # the worker is younger by a clock tick at least
        worker = stack.enter_context(
            subprocess.Popen(
                [PYTHON, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        )
        assert worker.stdout.readline() == "ready\n"
        if other_started == "after":
            time.sleep(0.05)
            stack.enter_context(pinned(FIRST))
        worker.stdin.write("go\n")
        worker.stdin.flush()
        mask = last_json(worker.stdout.readline())
        worker.stdin.close()
        assert worker.wait(30) == 0
    assert mask == ([SECOND] if other_started == "before" else [FIRST])


@needs_two_cpus
def test_inside_a_slot_nobody_elses_pins_are_looked_for():
    """A nested scope lies in a slot that is the job's own."""
    with pinned(FIRST) as busy:
        assert busy.pid in {info.pid for info in survey(PinOptions()).pinned}
        assert survey(PinOptions(), scope="a-slot").pinned == ()


@needs_two_cpus
def test_a_worker_with_no_slot_to_move_to_waits_for_the_older_process_then_stays():
    """Every slot is held by an older busy pinned process: the worker waits (a pool with no
    free core waits up to its claim timeout) and runs once its own slot's holder ends."""
    code = JOIN.format(first=FIRST, second=SECOND, timeout=30.0)
    with pinned(FIRST) as first, pinned(SECOND):
        time.sleep(0.05)
        with subprocess.Popen(
            [PYTHON, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as worker:
            assert worker.stdout.readline() == "ready\n"
            worker.stdin.write("go\n")
            worker.stdin.flush()
            # Still waiting after 1.5 s: it has printed no mask.
            assert not select.select([worker.stdout], [], [], 1.5)[0]
            started = time.monotonic()
            first.kill()
            mask = last_json(worker.stdout.readline())
            waited_after_kill = time.monotonic() - started
            worker.stdin.close()
            assert worker.wait(30) == 0
    assert mask == [FIRST] and waited_after_kill < 5
