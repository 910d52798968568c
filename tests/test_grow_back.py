"""Grow back: a pool clamped by another job's cores takes them as they free up, during the
same call, and never while that job holds them (read back from inside the tasks).

The neighbour is a real ``pinbackend run --cores CPU`` command holding one CPU's lease for
a while; the job is a real ``Parallel(n_jobs=...)`` call started while it holds it. These
jobs plan with the registry's leases only (``other_pins="ignore"``), so that other test
runs on this machine cannot change what they see.
"""

from __future__ import annotations

import json
import os

import pytest
from _helpers import last_json, run_python

CPUS = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="a neighbour and a job need 2 CPUs")

JOB = """
import json, os, subprocess, sys, time, warnings
import pinbackend
from joblib import Parallel, delayed

def task(i):
    start = time.time()
    while time.time() - start < 0.3:
        pass
    return {{"cpus": sorted(os.sched_getaffinity(0)), "start": start, "end": time.time(),
            "pid": os.getpid()}}

busy = "import time; print('held', flush=True); t = time.time()\\n" \\
    "while time.time() - t < {hold}: pass\\nprint(time.time(), flush=True)"
neighbour = subprocess.Popen(
    [sys.executable, "-m", "pinbackend", "run", "--cores", "{cpu}", "--other-pins", "ignore",
     "--", sys.executable, "-c", busy], stdout=subprocess.PIPE, text=True)
assert neighbour.stdout.readline() == "held\\n"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tasks = Parallel(n_jobs={n_jobs}, backend="pinned", other_pins="ignore")(
        delayed(task)(i) for i in range(16))
ended = float(neighbour.communicate()[0])
print(json.dumps({{"tasks": tasks, "neighbour_end": ended,
                  "warnings": [str(w.message) for w in caught]}}))
"""


@pytest.mark.parametrize("n_jobs", [-1, len(CPUS)])
def test_a_clamped_pool_grows_into_the_neighbours_core_once_it_leaves(n_jobs):
    first = CPUS[0]
    report = last_json(run_python(JOB.format(cpu=first, hold=2.5, n_jobs=n_jobs)).stdout)
    tasks, left = report["tasks"], report["neighbour_end"]
    on_first = [task for task in tasks if first in task["cpus"]]
    # Never on the neighbour's core while it held it...
    assert all(task["start"] >= left for task in on_first), json.dumps(report, indent=1)
    # ...and on it once it left: the pool grew, in the same call.
    assert on_first, json.dumps(report, indent=1)
    assert all(len(task["cpus"]) == 1 for task in tasks)
    assert len({task["pid"] for task in tasks}) == 2  # one worker added, none replaced
    if n_jobs != -1:  # asked for more than fit: said once
        assert sum("instead of" in message for message in report["warnings"]) == 1
