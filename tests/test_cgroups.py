"""The CPU budget inside real cgroups: a 1-CPU quota (flat and nested), a 1-CPU cpuset, and
the two variables, read from inside the process by ``info --json`` and ``plan --json``.

Needs root and a writable cgroup file system (skipped with the reason elsewhere); the
cgroups are made and removed by tests/_cgroups.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _cgroups import child_cgroup
from _helpers import PYTHON, pinbackend_cli

from pinbackend.bench.cgroups import CgroupUnavailable
from pinbackend.bench.cgroups import child_cgroup as bench_child_cgroup

CPUS = sorted(os.sched_getaffinity(0))
LOKY_CPU_COUNT = "from joblib import cpu_count; print(cpu_count())"


def inside(group, *args: str, env: dict | None = None) -> dict:
    result = group.run(PYTHON, "-m", "pinbackend", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def binding(budget: dict) -> list[dict]:
    return [limit for limit in budget["limits"] if max(1, int(limit["value"])) == budget["cpus"]]


@pytest.mark.parametrize("nested", [False, True], ids=["own-cgroup", "ancestor"])
def test_a_one_cpu_quota_makes_a_one_cpu_budget(nested):
    with child_cgroup(quota=1, nested=nested) as group:
        info = inside(group, "info", "--json", "--import", "")
        plan = inside(group, "plan", "--json")
        human = group.run(PYTHON, "-m", "pinbackend", "info", "--import", "").stdout
        loky = group.run(PYTHON, "-c", LOKY_CPU_COUNT).stdout.strip()
    budget = info["budget"]
    assert budget["cpus"] == 1 and budget["cores"] == 1
    assert binding(budget) == [{"kind": "quota", "value": 1.0, "source": group.limits["quota"]}]
    assert budget["limits"][0] == {
        "kind": "affinity",
        "value": len(CPUS),
        "source": "sched_getaffinity",
    }
    assert info["cpu_quota"] == 1.0
    assert len(plan["workers"]) == 1 and len(plan["workers"][0]) == 1
    assert plan["budget"]["cpus"] == 1
    assert f"{group.limits['quota']}  <- binds" in human or len(CPUS) == 1
    # For the record (loky#634): loky's cpu_count reads the quota at the mount's root only.
    print(f"loky cpu_count inside: {loky}; pinbackend budget: {budget['cpus']}")


def test_a_one_cpu_cpuset_makes_a_one_cpu_budget():
    cpu = CPUS[-1]
    with child_cgroup(cpus=str(cpu), nested=True) as group:
        info = inside(group, "info", "--json", "--import", "")
        plan = inside(group, "plan", "--json")
    assert info["allowed"] == [cpu]
    limits = info["budget"]["limits"]
    assert limits[0] == {"kind": "affinity", "value": 1, "source": "sched_getaffinity"}
    assert {"kind": "cpuset", "value": 1, "source": group.limits["cpuset"]} in limits
    assert group.limits["cpuset"].endswith("/inner/cpuset.effective_cpus")
    assert info["budget"]["cpus"] == 1
    assert plan["workers"] == [[cpu]]


def test_quota_and_cpuset_together_and_a_variable_below_them():
    with child_cgroup(quota=2, cpus=",".join(map(str, CPUS))) as group:
        info = inside(group, "info", "--json", "--import", "", env={"PINBACKEND_CPU_COUNT": "1"})
    kinds = [limit["kind"] for limit in info["budget"]["limits"]]
    assert kinds == ["affinity", "cpuset", "quota", "variable"]
    assert binding(info["budget"]) == [
        {"kind": "variable", "value": 1, "source": "PINBACKEND_CPU_COUNT"}
    ]


@pytest.mark.parametrize("variable", ["PYTHON_CPU_COUNT", "PINBACKEND_CPU_COUNT"])
def test_a_variable_of_one_makes_a_one_cpu_budget(variable):
    env = {variable: "1"}
    info = json.loads(pinbackend_cli("info", "--json", "--import", "", env=env, check=True).stdout)
    plan = json.loads(pinbackend_cli("plan", "--json", env=env, check=True).stdout)
    assert info["budget"]["cpus"] == 1
    assert binding(info["budget"])[-1] == {"kind": "variable", "value": 1, "source": variable}
    assert len(plan["workers"]) == 1


def test_a_bad_variable_is_ignored_with_a_note():
    env = {"PINBACKEND_CPU_COUNT": "two"}
    info = json.loads(pinbackend_cli("info", "--json", "--import", "", env=env, check=True).stdout)
    assert info["budget"]["cpus"] == len(CPUS)
    assert info["budget"]["notes"] == ["PINBACKEND_CPU_COUNT='two' ignored: not a positive integer"]


def test_cgroups_are_removed_even_with_a_process_left_inside_and_an_error():
    with (
        pytest.raises(RuntimeError, match="on purpose"),
        child_cgroup(quota=1, cpus=str(CPUS[0]), nested=True) as group,
    ):
        sleeper = group.popen(PYTHON, "-c", "import time; time.sleep(60)")
        deadline = time.monotonic() + 10  # until the sleeper is in (it joins as it starts)
        while "pinbackend-" not in Path(f"/proc/{sleeper.pid}/cgroup").read_text():
            assert time.monotonic() < deadline and sleeper.poll() is None
            time.sleep(0.05)
        made = [Path(folder) for folder in group.made]
        assert all(folder.is_dir() for folder in made)
        raise RuntimeError("on purpose")
    try:
        assert not any(folder.exists() for folder in made)
        assert sleeper.poll() is None  # moved out, not killed
        cgroup = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        assert "pinbackend-" not in cgroup
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


def test_unmakeable_cgroups_say_why(monkeypatch):
    from pinbackend.bench import cgroups

    monkeypatch.setattr(cgroups, "cgroup_mounts", lambda files: [])
    unavailable = pytest.raises(CgroupUnavailable, match="no cgroup hierarchy here lets this")
    with unavailable, bench_child_cgroup(quota=1):
        pass
    with pytest.raises(ValueError, match="needs a quota, cpus or both"), bench_child_cgroup():
        pass


# ---------------------------------------------------------------- the pools follow the budget

WORKERS = """
import json, os
from joblib import Parallel, delayed
import pinbackend

def inside():
    import time
    import numpy
    from threadpoolctl import threadpool_info
    time.sleep(0.3)  # every worker gets tasks
    blas = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    return os.getpid(), tuple(sorted(os.sched_getaffinity(0))), blas

results = Parallel(n_jobs=-1, backend="pinned")(delayed(inside)() for _ in range(6))
pinbackend.shutdown_workers()
print(json.dumps(sorted(set(results))))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "limit", [None, "quota", "cpuset", "PYTHON_CPU_COUNT", "PINBACKEND_CPU_COUNT"]
)
def test_each_limit_shrinks_the_joblib_workers_as_seen_from_inside(limit):
    """n_jobs=-1 under a 1-CPU limit: one worker, on one core, BLAS 1 (without: one per
    core, the control)."""
    if limit in ("quota", "cpuset"):
        cgroup = {"quota": {"quota": 1}, "cpuset": {"cpus": str(CPUS[-1]), "nested": True}}
        with child_cgroup(**cgroup[limit]) as group:
            result = group.run(PYTHON, "-c", WORKERS, timeout=120)
    else:
        result = subprocess.run(
            [PYTHON, "-c", WORKERS],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **({limit: "1"} if limit else {})},
        )
    assert result.returncode == 0, result.stderr[-3000:]
    workers = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(workers) == (len(CPUS) if limit is None else 1), workers
    assert all(len(mask) == 1 and blas == 1 for _, mask, blas in workers)
    if limit == "cpuset":
        assert [mask for _, mask, _ in workers] == [[CPUS[-1]]]


@pytest.mark.slow
def test_the_runners_pools_follow_the_budget_too():
    """A program's Pool() under the runner in a 1-CPU quota: one pinned worker."""
    script = Path(__file__).parent / "scripts" / "pools.py"
    with child_cgroup(quota=1) as group:
        result = group.run(PYTHON, "-m", "pinbackend", str(script), "pool", "fork", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    workers = {r["pid"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])["workers"]}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert len(worker["affinity"]) == 1 and worker["this_thread"]["blas"] == 1


@pytest.mark.slow
def test_two_jobs_in_one_one_cpu_quota_share_its_budget():
    """The quota is the cgroup's, not each process's: while one job holds its one core, a
    second job in the same cgroup waits instead of taking the other core."""
    hold = (
        "import sys\n"
        "from pinbackend.host.lifecycle import lease_slot\n"
        "from pinbackend.host.options import PinOptions\n"
        "lease = lease_slot(1, PinOptions(), command='first job')\n"
        "print(sorted(lease.cores), flush=True)\n"
        "sys.stdin.read()\n"
    )
    second = (
        "import json\n"
        "from pinbackend.host.lifecycle import lease_slot\n"
        "from pinbackend.host.options import PinOptions\n"
        "try:\n"
        "    lease = lease_slot(1, PinOptions(claim_timeout=0.5), command='second job')\n"
        "    print(json.dumps(sorted(lease.cores)))\n"
        "except Exception as error:\n"
        "    print(json.dumps(str(error)))\n"
    )
    with child_cgroup(quota=1) as group:
        first = group.popen(
            PYTHON, "-c", hold, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert len(json.loads(first.stdout.readline())) == 1
            inside = group.run(PYTHON, "-c", second)
            outside = subprocess.run(
                [PYTHON, "-c", second], capture_output=True, text=True, timeout=60
            )
        finally:
            first.stdin.close()
            first.wait(timeout=30)
            first.stdout.close()
    refused = json.loads(inside.stdout.strip().splitlines()[-1])
    assert isinstance(refused, str) and "no 1 free physical core" in refused, inside.stderr
    # The control: a job outside the cgroup is not bound by its quota.
    assert len(json.loads(outside.stdout.strip().splitlines()[-1])) == 1
