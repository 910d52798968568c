"""Fair share: a job that arrives while another job's pinned pool holds every core gets its
share at that pool's next task boundary, never on a core the pool still runs on, and the
pool grows back once the newcomer's call ended (read back from inside the tasks).

The first job is a real ``Parallel(n_jobs=2)`` call of many short tasks; the newcomer is
another program's ``Parallel(n_jobs=-1)``, started once the first job's tasks run. Both plan
with the registry's leases only (``other_pins="ignore"``): other test runs on this machine
cannot change what they see.
"""

from __future__ import annotations

import json
import os

import pytest
from _helpers import SPIN_TASK, last_json, run_python

from pinbackend.host.fair import asker_of, fair_share, job_of, jobs_among
from pinbackend.host.lease_info import LeaseInfo

CPUS = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="two jobs need 2 CPUs")

JOBS = (
    SPIN_TASK
    + """
import json, os, subprocess, sys, time
from pathlib import Path
from joblib import Parallel, delayed
import pinbackend

folder = Path(sys.argv[1])
if sys.argv[2] == "newcomer":
    try:
        tasks = Parallel(n_jobs=-1, backend="pinned", other_pins="ignore",
                         oversubscribe=sys.argv[3])(delayed(spin)(0.3) for _ in range(4))
        print(json.dumps({"tasks": tasks}))
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
    sys.exit()

newcomer = None
def tasks():
    global newcomer
    started = folder / "started"
    yield delayed(spin)(0.4, str(started))
    for _ in range(19):
        if newcomer is None and started.exists():
            newcomer = subprocess.Popen(
                [sys.executable, "-c", CODE, str(folder), "newcomer",
                 sys.argv[3]], stdout=subprocess.PIPE, text=True)
        yield delayed(spin)(0.4)

first = Parallel(n_jobs=2, backend="pinned", other_pins="ignore", pre_dispatch="n_jobs")(tasks())
print(json.dumps({"first": first, "newcomer": json.loads(newcomer.communicate()[0])}))
"""
)


def run_jobs(tmp_path, policy: str) -> dict:
    code = f"CODE = {JOBS!r}\nimport sys; sys.argv[1:] = {[str(tmp_path), 'first', policy]!r}\n"
    return last_json(run_python(code + JOBS, timeout=120).stdout)


def test_a_newcomer_gets_its_share_at_a_task_boundary_and_the_pool_grows_back(tmp_path):
    report = run_jobs(tmp_path, "clamp")
    first, newcomer = report["first"], report["newcomer"]["tasks"]
    dump = json.dumps(report)
    # The newcomer did not wait for the first job's call, nor for its tail (where its
    # workers run out of tasks and let go anyway): it started before half of its tasks...
    halfway = sorted(start for *_, start, _ in first)[len(first) // 2]
    assert min(start for *_, start, _ in newcomer) < halfway, dump
    # ...and never ran on a core while a task of the first job ran there.
    for _, cpus, start, end in newcomer:
        assert len(cpus) == 1, dump
        for _, other, other_start, other_end in first:
            overlap = min(end, other_end) - max(start, other_start)
            assert cpus != other or overlap <= 0, dump
    # Once the newcomer's call ended, the first job ran on its core again.
    lent = newcomer[0][1]
    left = max(end for *_, end in newcomer)
    assert any(cpus == lent and start >= left for _, cpus, start, _ in first), dump


def test_a_newcomer_that_refuses_to_wait_asks_for_no_share(tmp_path):
    # oversubscribe="error" keeps its meaning: it refuses at once, and the first job keeps
    # both cores for its whole call.
    report = run_jobs(tmp_path, "error")
    assert "free" in report["newcomer"]["error"], report["newcomer"]
    used = {tuple(cpus) for _, cpus, _, _ in report["first"]}
    assert used == {(cpu,) for cpu in CPUS}
    assert len({pid for pid, *_ in report["first"]}) == 2


@pytest.mark.parametrize(
    ("cpus", "jobs", "share"),
    [(2, 1, 2), (2, 2, 1), (16, 3, 5), (256, 4, 64), (2, 5, 1), (8, 0, 8)],
)
def test_a_share_is_equal_cpus_per_job_and_never_nothing(cpus, jobs, share):
    assert fair_share(cpus, jobs) == share


def test_a_job_is_a_pools_planner_or_the_holder_itself():
    worker = LeaseInfo("a", pid=11, cores=frozenset({0}), command="", owner=10)
    sibling = LeaseInfo("b", pid=12, cores=frozenset({1}), command="", owner=10)
    run = LeaseInfo("c", pid=20, cores=frozenset({2}), command="")
    pinned = LeaseInfo("d", pid=30, cores=frozenset({3}), command="", source="affinity")
    assert [job_of(info) for info in (worker, sibling, run, pinned)] == [10, 10, 20, 30]
    assert jobs_among([worker, sibling, run, pinned], me=20) == {10, 30}


def test_an_asker_that_takes_nothing_is_known_by_its_user_or_its_process():
    me = os.geteuid()
    other = me + 1
    # Another user (host registry) as a whole: new processes of theirs are not heard anew.
    assert asker_of(f"share-{other}-123-0badc0de.json") == f"share-{other}-"
    # A process of this user, in the host registry or in the user's own registry, alone.
    assert asker_of(f"share-{me}-123-0badc0de.json") == f"share-{me}-123-"
    assert asker_of("123-0badc0de.json") == "123-"
    assert not f"share-{me}-1234-0badc0de.json".startswith(asker_of(f"share-{me}-123-a.json"))


RUN_NEWCOMER = (
    SPIN_TASK
    + """
import json, os, subprocess, sys, threading, time
from pathlib import Path
from joblib import Parallel, delayed
import pinbackend

PAYLOAD = (
    "import json, os, time; start = time.time()\\n"
    "while time.time() - start < 1.0: pass\\n"
    "print(json.dumps([os.getpid(), sorted(os.sched_getaffinity(0)), start, time.time()]))"
)
flag = Path(sys.argv[1]) / "started"
newcomer = []

def start_newcomer():
    # From a thread of its own, not from the task generator: a dispatch delayed by a
    # process start would leave a worker idle long enough to let its core go.
    while not flag.exists():
        time.sleep(0.01)
    newcomer.append(subprocess.Popen(
        [sys.executable, "-m", "pinbackend", "run", "-n", "1", "--other-pins", "ignore",
         "--claim-timeout", "30", "--", sys.executable, "-c", PAYLOAD],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

threading.Thread(target=start_newcomer).start()
tasks = [delayed(spin)(0.4, str(flag))] + [delayed(spin)(0.4) for _ in range(19)]
first = Parallel(n_jobs=2, backend="pinned", other_pins="ignore")(tasks)
out, err = newcomer[0].communicate()
print(json.dumps({"first": first, "run": json.loads(out) if out else err}))
"""
)


def test_a_run_newcomer_gets_its_share_too(tmp_path):
    """`run -n 1` told to wait, arriving on a host a pool holds: it asks while it waits,
    like a pool (it used to wait for the pool's whole call)."""
    code = f"import sys; sys.argv[1:] = [{str(tmp_path)!r}]\n" + RUN_NEWCOMER
    report = last_json(run_python(code, timeout=120).stdout)
    first, run = report["first"], report["run"]
    dump = json.dumps(report)
    assert isinstance(run, list), dump  # it ran (its error otherwise)
    _, cpus, start, end = run
    # Within the first job's call, not in its tail (where its workers run out of tasks
    # and let go of their cores anyway): before half of its tasks started.
    halfway = sorted(task[2] for task in first)[len(first) // 2]
    assert len(cpus) == 1 and start < halfway, dump
    for _, other, other_start, other_end in first:
        assert cpus != other or min(end, other_end) <= max(start, other_start), dump


AT_ONCE = (
    SPIN_TASK
    + """
import json, os, subprocess, sys, time
from pathlib import Path
from joblib import Parallel, delayed
import pinbackend

flag = Path(sys.argv[1]) / "planned"
if sys.argv[2] == "second":
    def tasks():
        # Planned by now (joblib configures the pool before it takes the first task): the
        # first job takes every core before this pool's workers exist to claim theirs.
        flag.touch()
        time.sleep(0.5)
        for _ in range(4):
            yield delayed(spin)(0.3)
    out = Parallel(n_jobs=2, backend="pinned", other_pins="ignore")(tasks())
    print(json.dumps(out))
    sys.exit()

with Parallel(n_jobs=2, backend="pinned", other_pins="ignore") as parallel:
    parallel(delayed(spin)(0.05) for _ in range(2))  # warm workers: they claim at once
    time.sleep(0.5)  # idle: their cores go back, and the second job plans on them
    second = subprocess.Popen([sys.executable, "-c", CODE, sys.argv[1], "second"],
                              stdout=subprocess.PIPE, text=True)
    while not flag.exists():
        time.sleep(0.005)
    first = parallel(delayed(spin)(0.3) for _ in range(20))
print(json.dumps({"first": first, "second": json.loads(second.communicate()[0])}))
"""
)


def test_a_pool_whose_planned_cores_were_taken_before_its_workers_claimed_asks_too(tmp_path):
    """Two jobs that plan at the same instant both find every core free; the one whose
    workers claim first takes them. The other's workers wait for a slot: they ask for
    their job's share (they waited unheard for the first job's whole call before)."""
    code = f"CODE = {AT_ONCE!r}\nimport sys; sys.argv[1:] = [{str(tmp_path)!r}, 'first']\n"
    report = last_json(run_python(code + AT_ONCE, timeout=120).stdout)
    first, second = report["first"], report["second"]
    dump = json.dumps(report)
    halfway = sorted(task[2] for task in first)[len(first) // 2]
    assert min(task[2] for task in second) < halfway, dump
    for _, cpus, start, end in second:
        for _, other, other_start, other_end in first:
            assert cpus != other or min(end, other_end) <= max(start, other_start), dump
