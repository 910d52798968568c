"""Two jobs on one host: an idle pool yields its cores, a busy host makes a job wait, warm
workers are reused; and the thread variables a user set are honoured up to the slot size.

Every job is a real process; workers report their own masks and pools from inside.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time

import pytest
from _helpers import PYTHON, last_json, run_python

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs"),
]

#: A job that runs one pinned Parallel call per line it reads on stdin ("-1 0.0" runs
#: n_jobs=-1 with tasks of 0.0 s), printing what its workers report, until stdin closes.
JOB = textwrap.dedent(
    """
    import json, os, sys, time, warnings
    from joblib import Parallel, delayed
    import pinbackend

    def task(seconds):
        started = time.time()
        time.sleep(seconds)
        from pinbackend.host.slot import current_slot
        slot = current_slot()
        return {"pid": os.getpid(), "cores": sorted(slot.cores) if slot else None,
                "started": started}

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        n_jobs, seconds, timeout = line.split()
        begun = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                results = Parallel(n_jobs=int(n_jobs), backend="pinned",
                                   claim_timeout=float(timeout))(
                    delayed(task)(float(seconds)) for _ in range(2 * len(os.sched_getaffinity(0))))
                error = None
            except Exception as failure:
                results, error = [], f"{type(failure).__name__}: {failure}"
        print(json.dumps({"begun": begun, "results": results, "error": error,
                          "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}),
              flush=True)
    pinbackend.shutdown_workers()
    """
)


class Job:
    """A live job process driven line by line."""

    def __init__(self):
        self.process = subprocess.Popen(
            [PYTHON, "-c", JOB],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def call(self, n_jobs=-1, seconds=0.0, timeout=30.0) -> dict:
        self.process.stdin.write(f"{n_jobs} {seconds} {timeout}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read()
        return json.loads(line)

    def start_call(self, n_jobs=-1, seconds=0.0, timeout=30.0) -> None:
        self.process.stdin.write(f"{n_jobs} {seconds} {timeout}\n")
        self.process.stdin.flush()

    def result(self) -> dict:
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def jobs():
    started: list[Job] = []

    def start() -> Job:
        started.append(Job())
        return started[-1]

    yield start
    for job in started:
        job.close()


def pids(call: dict) -> set[int]:
    return {r["pid"] for r in call["results"]}


def cores(call: dict) -> list[list[int]]:
    return sorted({tuple(r["cores"]) for r in call["results"]})


def test_an_idle_pool_yields_its_cores_to_another_job_and_reuses_warm_workers(jobs):
    first, second = jobs(), jobs()
    # Tasks of 0.3 s, so that every worker gets some.
    before = first.call(seconds=0.3)
    assert cores(before) == [(cpu,) for cpu in ALLOWED] and before["warnings"] == []
    # Back to back, and after an idle pause: the same warm workers, the same cores.
    assert pids(first.call(seconds=0.3)) == pids(before)
    time.sleep(1.0)
    assert pids(first.call(seconds=0.3)) == pids(before)
    # The first job's pool is idle now: another job gets every core within about a second.
    other = second.call(seconds=0.3)
    first_task = min(r["started"] for r in other["results"]) - other["begun"]
    assert cores(other) == [(cpu,) for cpu in ALLOWED], other
    assert other["error"] is None and first_task < 5.0, other
    print(f"another job's first task started {first_task:.2f} s after its call")
    time.sleep(1.0)  # the second job's workers yield in turn
    again = first.call(seconds=0.3)
    assert pids(again) == pids(before) and again["warnings"] == []


def test_a_job_on_a_busy_host_waits_and_names_who_holds_the_cores(jobs):
    busy, waiting = jobs(), jobs()
    busy.call()  # start its workers
    busy.start_call(seconds=3.0)  # holds every core for about 3 s
    time.sleep(1.0)
    result = waiting.call(timeout=30.0)
    busy_result = busy.result()
    assert result["error"] is None
    waits = [w for w in result["warnings"] if w.startswith("WaitingForCoresWarning")]
    assert len(waits) == 1, result["warnings"]
    assert f"pid {next(iter(pids(busy_result)))}" in waits[0] or "by pid" in waits[0]
    # It started only at the busy job's first task boundary (fair share, host/fair.py: it
    # asked while it waited, and the busy job gave it a core as its first tasks ended).
    boundary = min(r["started"] for r in busy_result["results"]) + 3.0
    assert min(r["started"] for r in result["results"]) >= boundary - 0.5


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"OMP_NUM_THREADS": "1"}, {"blas": len(ALLOWED), "openmp": 1}),
        ({"OPENBLAS_NUM_THREADS": "1"}, {"blas": 1, "openmp": len(ALLOWED)}),
        ({"OMP_NUM_THREADS": "64", "OPENBLAS_NUM_THREADS": "64"}, None),
    ],
)
def test_thread_variables_the_user_set_are_honoured_up_to_the_slot_size(variables, expected):
    expected = expected or {"blas": len(ALLOWED), "openmp": len(ALLOWED)}
    code = f"""
    import json, os
    from joblib import Parallel, delayed
    import pinbackend

    def pools():
        import numpy, sklearn.cluster  # BLAS and scikit-learn's OpenMP runtime
        from threadpoolctl import threadpool_info
        sizes = {{}}
        for pool in threadpool_info():
            sizes[pool["user_api"]] = max(sizes.get(pool["user_api"], 0), pool["num_threads"])
        return sizes, {{v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}

    results = Parallel(n_jobs=-1, backend="pinned", cores_per_worker={len(ALLOWED)})(
        delayed(pools)() for _ in range(2))
    pinbackend.shutdown_workers()
    print(json.dumps(results))
    """
    results = last_json(run_python(code, env=variables).stdout)
    for sizes, env in results:
        assert {api: sizes[api] for api in ("blas", "openmp")} == expected, (sizes, env)
        assert env["OMP_NUM_THREADS"] == str(expected["openmp"])
