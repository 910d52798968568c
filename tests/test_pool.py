"""Pools: slots planned once in the parent, claimed by whichever workers start."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

import pytest

from pinbackend.core.planner import OversubscriptionWarning
from pinbackend.host.leases import claim
from pinbackend.host.lifecycle import decide_waiting, pool_from, report_plan
from pinbackend.host.options import PinOptions
from pinbackend.host.policy import Request
from pinbackend.host.pool import PoolPlan
from pinbackend.host.view import survey


def plan(n_workers=None, policy="error", **options):
    """A pool planned on this host now, as the entry points plan it."""
    options = PinOptions(oversubscribe=policy, **options)
    request = Request("a test pool", workers=n_workers)
    decision, view = decide_waiting(lambda: survey(options), options, request)
    return pool_from(decision, view, options)


JOIN = """
import json, pickle, sys, warnings
from pinbackend.host.worker import join_pool
from pinbackend.diagnostics import process_report
import numpy
pool = pickle.loads(bytes.fromhex(sys.argv[1]))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        slot = join_pool(pool)
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        sys.exit(0)
report = process_report()
report["warnings"] = [str(w.message) for w in caught]
print(json.dumps(report), flush=True)
sys.stdin.read()
"""


def join_in_workers(pool, count: int) -> list[dict]:
    """Start ``count`` worker processes that join ``pool``; return what each reports."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", JOIN, pickle.dumps(pool).hex()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        return [json.loads(w.stdout.readline()) for w in workers]
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait()
            worker.stdout.close()


def test_workers_claim_disjoint_slots_and_a_surplus_worker_fails_closed():
    pool = plan(2, claim_timeout=0.5)
    assert pool.slots == (frozenset({0}), frozenset({1}))
    reports = join_in_workers(pool, 3)
    errors = [r for r in reports if "error" in r]
    pinned = [r for r in reports if "error" not in r]
    assert len(errors) == 1 and "none of the 2 planned core sets is free" in errors[0]["error"]
    assert sorted(r["affinity"] for r in pinned) == [[0], [1]]
    for report in pinned:
        assert {tuple(m) for m in report["threads"].values()} == {tuple(report["affinity"])}
        assert report["env"]["OPENBLAS_NUM_THREADS"] == "1"
        assert report["cpu_count"] == 1


def test_plan_skips_cores_held_by_other_jobs_but_not_by_its_own_workers():
    with claim({1}, command="another job"):
        assert plan().slots == (frozenset({0}),)
    with claim({1}, owner=os.getpid()):
        assert plan().slots == (frozenset({0}), frozenset({1}))


def test_shared_pool_workers_share_the_least_crowded_slot_with_a_warning():
    pool = plan(3, policy="share")
    with pytest.warns(OversubscriptionWarning, match="3 workers asked for"):
        report_plan(pool)
    assert pool.shared and len(pool.slots) == 3
    reports = join_in_workers(pool, 3)
    # The owner warned once for the pool; its workers say nothing more.
    assert [r["warnings"] for r in reports] == [[], [], []]
    assert sorted(r["affinity"] for r in reports) in ([[0], [0], [1]], [[0], [1], [1]])


def test_a_worker_still_waiting_for_its_slot_ends_with_its_pools_owner():
    """The owner watch starts before the claim: a killed owner leaves no waiting orphan."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        pool = PoolPlan(slots=(frozenset({0}),), scope="", owner=owner.pid, claim_timeout=60.0)
        with claim({0}, command="a job that holds CPU 0"):
            worker = subprocess.Popen(
                [sys.executable, "-c", JOIN, pickle.dumps(pool).hex()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)  # the worker is waiting for CPU 0 now
            assert worker.poll() is None
            started = time.monotonic()
            owner.kill()
            owner.wait()
            assert worker.wait(timeout=10) == 70
            assert time.monotonic() - started < 5
            worker.stdout.close()
            worker.stdin.close()
    finally:
        owner.kill()
        owner.wait()


def test_a_claim_that_fails_after_locking_releases_every_lock(monkeypatch):
    """All or nothing: when applying the slot fails, the lease taken for it is released."""
    import pinbackend.host.lifecycle as lifecycle
    import pinbackend.host.worker as worker
    from pinbackend.host.holders import list_leases
    from pinbackend.host.state import STATE

    def broken_apply(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(worker, "apply_slot", broken_apply)
    pool = PoolPlan(slots=(frozenset({0}),), scope="", owner=os.getpid(), claim_timeout=0.0)
    with pytest.raises(OSError, match="No space left"):
        worker.join_pool(pool)
    assert list_leases() == []
    assert isinstance(STATE.claim_error, OSError)
    lifecycle.release_slot(None)
    assert STATE.claim_error is None and STATE.pool is None
