"""Pools: slots planned once in the parent, claimed by whichever workers start."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

from pinbackend.core.planner import OversubscriptionWarning
from pinbackend.host.leases import claim
from pinbackend.host.pool import plan_pool

JOIN = """
import json, pickle, sys, warnings
from pinbackend.host.pool import join_pool
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
    pool = plan_pool(2, claim_timeout=0.5)
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
        assert plan_pool().slots == (frozenset({0}),)
    with claim({1}, owner=os.getpid()):
        assert plan_pool().slots == (frozenset({0}), frozenset({1}))


def test_shared_pool_workers_share_the_least_crowded_slot_with_a_warning():
    with pytest.warns(OversubscriptionWarning, match="3 workers asked for"):
        pool = plan_pool(3, oversubscribe="share")
    assert pool.shared and len(pool.slots) == 3
    reports = join_in_workers(pool, 3)
    assert sorted(len(r["warnings"]) for r in reports) == [0, 0, 1]
    assert "shares CPUs" in max(reports, key=lambda r: len(r["warnings"]))["warnings"][0]
    assert sorted(r["affinity"] for r in reports) in ([[0], [0], [1]], [[0], [1], [1]])
