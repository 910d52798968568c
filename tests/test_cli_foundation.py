"""`info`, `plan`, `run` and `status` as a user runs them: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os

import pytest
from _helpers import PYTHON, pinbackend_cli, pinbackend_started
from conftest import SNAPSHOTS

from pinbackend.core.cpuset import format_cpu_list
from pinbackend.host.machine import read_topology

REPORT = (
    "import json, os; from pinbackend.diagnostics import process_report; "
    "import numpy; print(json.dumps(process_report()), flush=True)"
)


def json_out(*args):
    result = pinbackend_cli(*args, check=True)
    return json.loads(result.stdout)


def test_info_json_on_this_machine():
    info = json_out("info", "--json")
    assert info["allowed"] == sorted(os.sched_getaffinity(0))
    for key in ("packages", "numa_nodes", "cores", "l3_groups"):
        groups = info[key]
        assert all(isinstance(g, list) and g for g in groups)
    assert sorted(cpu for core in info["cores"] for cpu in core) == info["allowed"]
    assert any(pool["user_api"] == "blas" for pool in info["thread_pools"])


def test_plan_json_on_this_machine_gives_one_disjoint_core_per_worker():
    info = json_out("info", "--json")
    workers = json_out("plan", "--json")["workers"]
    assert sorted(map(sorted, workers)) == sorted(map(sorted, info["cores"]))
    cpus = [cpu for worker in workers for cpu in worker]
    assert len(cpus) == len(set(cpus))
    if len(info["cores"]) >= 2:
        reserved = info["cores"][0][0]
        left = json_out("plan", "--json", "--reserve", str(reserved))["workers"]
        assert len(left) == len(info["cores"]) - 1
        assert all(reserved not in worker for worker in left)


def test_info_human_output_names_the_parts():
    out = pinbackend_cli("info", check=True).stdout
    assert "allowed CPUs:" in out and "package" in out and "thread pools" in out


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_info_and_plan_work_on_every_snapshot(name, snapshot_root):
    root = str(snapshot_root(name))
    info = json_out("info", "--json", "--root", root)
    allowed = set(info["allowed"])
    assert allowed and {cpu for core in info["cores"] for cpu in core} == allowed
    plan = json_out("plan", "-n", "4", "--json", "--root", root)
    workers = [set(w) for w in plan["workers"]]
    assert len(workers) == 4
    assert set().union(*workers) == allowed
    assert sum(len(w) for w in workers) == len(allowed)
    human = pinbackend_cli("plan", "-n", "4", "--root", root, check=True).stdout
    assert "core map" in human and "NUMA node" in human


def groups_of(info, key):
    return [set(g) for g in info[key]]


def inside_one(worker, groups):
    return sum(1 for g in groups if g & worker) == 1


@pytest.mark.parametrize(
    ("name", "n_workers", "level", "per_group"),
    [
        ("16em64t-4s2c2t", 4, "packages", 1),
        ("32intel64-2p8co2t+8ve", 4, "packages", 2),
        ("64amd64-4s2n4ca2co", 8, "numa_nodes", 1),
        ("64amd64-4s2n4ca2co", 16, "l3_groups", 2),
        ("128arm-2pa2n8cluster4co", 4, "numa_nodes", 1),
        ("16amd64-8n2c", 8, "numa_nodes", 1),
    ],
)
def test_plans_follow_the_machine(name, n_workers, level, per_group, snapshot_root):
    root = str(snapshot_root(name))
    info = json_out("info", "--json", "--root", root)
    plan = json_out("plan", "-n", str(n_workers), "--json", "--root", root)
    groups = groups_of(info, level)
    workers = [set(w) for w in plan["workers"]]
    assert all(inside_one(w, groups) for w in workers), f"a worker straddles {level}"
    assert [sum(1 for w in workers if w <= g) for g in groups] == [per_group] * len(groups)
    # SMT siblings are never split between workers.
    for core in groups_of(info, "cores"):
        assert sum(1 for w in workers if w & core) == 1


def test_hybrid_plan_keeps_p_and_e_cores_apart(snapshot_root):
    root = str(snapshot_root("20em64t-hybrid-1p6c2t+2ca4co1t"))
    info = json_out("info", "--json", "--root", root)
    kinds = groups_of(info, "cpu_kinds")
    assert len(kinds) == 2
    plan = json_out("plan", "-n", "4", "--json", "--root", root)
    assert all(inside_one(set(w), kinds) for w in plan["workers"])


def test_plan_on_a_cpuset_uses_only_allowed_cpus(snapshot_root):
    root = str(snapshot_root("16amd64-8n2c-cpusets"))
    plan = json_out("plan", "--json", "--root", root)
    used = {cpu for w in plan["workers"] for cpu in w}
    assert used == {0, 1, 2, 3, 5, 6, 12, 13, 14, 15}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "-n", "0"], "must be a positive integer; got '0'"),
        (["plan", "-n", "3"], "3 workers of 1 core need 3 cores"),
        (["plan", "--reserve", "999"], "reserve names CPUs 999"),
        (["plan", "--reserve", "x-y"], "invalid CPU list 'x-y'"),
        (["info", "--root", "/nonexistent/machine"], "/nonexistent/machine"),
        (["run", "--cores", "999", "--", "true"], "CPUs 999 are not allowed here"),
        (["run"], "run needs a command"),
        (["run", "-n", "1", "--reserve", "999", "--", "true"], "reserve names CPUs 999"),
        (["run", "-n", "64", "--", "true"], "a slot of 64 physical cores cannot fit"),
        (["run", "--wait", "nan", "-n", "1", "--", "true"], "must be a finite number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    if args[:2] == ["plan", "-n"] and args[2] == "3" and len(os.sched_getaffinity(0)) != 2:
        pytest.skip("the message assumes this project's 2-core machines")
    result = pinbackend_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1


def test_info_on_an_empty_root_is_a_clear_error(tmp_path):
    result = pinbackend_cli("plan", "--root", str(tmp_path))
    assert result.returncode == 2
    assert str(tmp_path) in result.stderr


def test_run_pins_caps_and_returns_the_exit_code():
    result = pinbackend_cli("run", "--cores", "1", "--", PYTHON, "-c", REPORT + "; exit(7)")
    assert result.returncode == 7, result.stderr
    report = json.loads(result.stdout)
    assert report["affinity"] == [1]
    assert {tuple(m) for m in report["threads"].values()} == {(1,)}
    assert report["env"]["OPENBLAS_NUM_THREADS"] == "1"
    assert [p["num_threads"] for p in report["thread_pools"] if p["user_api"] == "blas"] == [1]


def _script(path, text: str, mode: int = 0o755) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


# What bash says and exits with for each (checked with bash 5.2 and taskset 2.38).
@pytest.mark.parametrize(
    ("make", "status", "says"),
    [
        (lambda tmp: "no-such-command-pinbackend", 127, "command not found: "),
        (lambda tmp: str(tmp / "missing"), 127, "no such file: "),
        (lambda tmp: "/etc/passwd", 126, "permission denied (it is not executable by you)"),
        (lambda tmp: _script(tmp / "plain", "echo hi\n", 0o644), 126, "permission denied"),
        (lambda tmp: str(tmp), 126, "it is a directory"),
        (lambda tmp: _script(tmp / "bad", "#!/nonexistent/interpreter\n"), 127, "interpreter"),
    ],
    ids=[
        "not-on-path",
        "no-such-file",
        "not-executable",
        "script-not-executable",
        "directory",
        "bad-interpreter",
    ],
)
def test_run_of_a_command_that_cannot_run_exits_as_a_shell_would(tmp_path, make, status, says):
    command = make(tmp_path)
    result = pinbackend_cli("run", "-n", "1", "--", command)
    assert result.returncode == status, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("pinbackend: error: ") and says in line and repr(command) in line


def test_run_of_a_script_without_a_shebang_runs_it_with_sh(tmp_path):
    script = _script(tmp_path / "plain", "echo ran on $PINBACKEND_SLOT; exit 3\n")
    result = pinbackend_cli("run", "--cores", "0", "--", script)
    assert (result.returncode, result.stdout, result.stderr) == (3, "ran on 0\n", "")


def test_run_with_every_cpu_reserved_says_so_whole():
    cpus = format_cpu_list(os.sched_getaffinity(0))
    result = pinbackend_cli("run", "--reserve", cpus, "-n", "1", "--", "true")
    assert result.returncode == 2
    assert result.stderr == (
        f"pinbackend: error: a slot of 1 physical core cannot fit: every CPU this process may "
        f"use is reserved (allowed {cpus}, reserved {cpus}); reserve fewer CPUs\n"
    )


def test_run_with_some_cpus_reserved_names_what_is_left():
    cores = read_topology().cores
    if len(cores) < 2:
        pytest.skip("needs 2 physical cores")
    first, rest = sorted(cores[0]), sorted(set().union(*cores[1:]))
    result = pinbackend_cli("run", "--reserve", format_cpu_list(rest), "-n", "2", "--", "true")
    assert result.returncode == 2
    assert result.stderr == (
        f"pinbackend: error: a slot of 2 physical cores cannot fit: this process may use 1 "
        f"physical core (CPUs {format_cpu_list(first)}, with {format_cpu_list(rest)} reserved); "
        f"ask for at most 1 core, or reserve fewer CPUs\n"
    )


def test_run_beyond_the_cpu_budget_names_the_budget():
    cores = read_topology().cores
    if len(cores) < 2:
        pytest.skip("needs 2 physical cores")
    result = pinbackend_cli("run", "-n", "2", "--", "true", env={"PINBACKEND_CPU_COUNT": "1"})
    assert result.returncode == 2
    assert "a slot of 2 physical cores cannot fit: this process may use 1 physical core" in (
        result.stderr
    )
    assert "the CPU budget is 1 CPU, set by PINBACKEND_CPU_COUNT=1); ask for at most 1 core\n" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("modules", "says"),
    [
        ("nosuchmod", "--import nosuchmod: no module named 'nosuchmod' in this Python"),
        ("json,nosuchmod", "--import json,nosuchmod: no module named 'nosuchmod'"),
        ("json.nosuch", "no module named 'json.nosuch'"),
        ("pinbackend_test_broken", "importing 'pinbackend_test_broken' failed: RuntimeError: boom"),
    ],
)
def test_info_refuses_a_module_it_cannot_import(tmp_path, modules, says):
    (tmp_path / "pinbackend_test_broken.py").write_text("raise RuntimeError('boom')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    for args in (["info", "--import", modules], ["info", "--json", "--import", modules]):
        result = pinbackend_cli(*args, env={"PYTHONPATH": path})
        assert result.returncode == 2 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("pinbackend: error: ") and says in line, line


WAIT = REPORT + "; import sys; sys.stdin.read()"


def test_two_runs_side_by_side_get_different_cores():
    with pinbackend_started("run", "-n", "1", "--", PYTHON, "-c", WAIT) as (first, line):
        first_cores = json.loads(line)["affinity"]
        second = pinbackend_cli("run", "-n", "1", "--", PYTHON, "-c", REPORT, check=True)
        second_cores = json.loads(second.stdout)["affinity"]
        assert len(first_cores) == len(second_cores) == 1
        assert first_cores != second_cores
        status = json_out("status", "--json")
        (lease,) = status["leases"]
        # exec keeps the pid: the lease holder is the command itself.
        assert lease["pid"] == first.pid
        assert lease["cores"] == first_cores
        assert WAIT in lease["command"]
        assert status["registry"] == os.environ["PINBACKEND_RUNTIME_DIR"]


def test_run_refuses_held_cores_unless_sharing():
    with pinbackend_started("run", "--cores", "0", "--", PYTHON, "-c", WAIT) as (holder, _):
        refused = pinbackend_cli("run", "--cores", "0", "--", "true")
        assert refused.returncode == 2
        assert f"CPUs 0 are held by pid {holder.pid}" in refused.stderr
        shared = pinbackend_cli("run", "--cores", "0", "--share", "--", "true")
        assert shared.returncode == 0
        assert "warning: sharing CPUs 0" in shared.stderr


def test_status_and_info_list_the_holder():
    with pinbackend_started("run", "--cores", "0", "--", PYTHON, "-c", WAIT) as (holder, _):
        out = pinbackend_cli("status", check=True).stdout
        assert str(holder.pid) in out and "lease registry:" in out
        (lease,) = json_out("info", "--json")["leases"]
        assert (lease["pid"], lease["cores"]) == (holder.pid, [0])
        assert f"pid {holder.pid}: CPUs 0" in pinbackend_cli("info", check=True).stdout
    assert "no leases held" in pinbackend_cli("status", check=True).stdout
