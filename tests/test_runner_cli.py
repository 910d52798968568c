"""The runner's command line: which form a line is, its options, errors and --dry-run."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from _helpers import pinbackend_cli

from pinbackend.cli import SUBCOMMANDS
from pinbackend.cli._common import UsageError
from pinbackend.cli.runner import route

SCRIPTS = Path(__file__).parent / "scripts"
PROBE = str(SCRIPTS / "probe.py")
ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], None),
        (["--help"], None),
        (["--version"], None),
        (["info", "--json"], None),
        (["-h", "plan"], None),
        (["bench"], None),  # reserved for a future subcommand
        (["script.py", "info"], ("script.py", ("info",), False, ())),
        (["-p", "2", "script.py", "-p", "9"], ("script.py", ("-p", "9"), False, ("-p", "2"))),
        (["--cores=0-1", "-t1", "s.py"], ("s.py", (), False, ("--cores=0-1", "-t1"))),
        (["--dry-run", "-m", "pkg", "x"], ("pkg", ("x",), True, ("--dry-run",))),
        (["-mpkg", "x"], ("pkg", ("x",), True, ())),
        (["--", "info", "a"], ("info", ("a",), False, ())),
        (["./info"], ("./info", (), False, ())),
        (["--pin-main", "--", "plan"], ("plan", (), False, ("--pin-main",))),
    ],
)
def test_route_decides_between_subcommands_and_programs(argv, expected):
    call = route(argv, SUBCOMMANDS)
    if expected is None:
        assert call is None
    else:
        name, args, module, options = expected
        assert (call.target.name, call.target.args, call.target.module) == (name, args, module)
        assert call.options == options


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "2", "info"], "cannot come before the subcommand 'info'"),
        (["--pin-main", "bench"], "./bench or -- bench"),
        (["-p", "2"], "missing the program to run"),
        (["-m"], "-m needs a module name"),
        (["-"], "reading the program from stdin ('-') is not supported"),
    ],
)
def test_route_explains_ambiguous_lines(argv, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        route(argv, SUBCOMMANDS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "0", PROBE], "argument -p/--processes: must be a positive integer; got '0'"),
        (["--cores", "9999", PROBE], "--cores 9999: CPUs 9999 are not allowed here"),
        (["--reserve", "9999", PROBE], "--reserve 9999: CPUs 9999 are not online"),
        (["--cores", "0", "--reserve", "0", PROBE], "every CPU of cores (0) is reserved"),
        (["--oversubscribe", "maybe", PROBE], "invalid choice: 'maybe'"),
        (["--json", PROBE], "--json and --root only go with --dry-run"),
        (["--frobnicate", PROBE], "unrecognized arguments: --frobnicate"),
        (["-p", "2", "status"], "cannot come before the subcommand 'status'"),
        (["--claim-timeout", "-1", PROBE], "--claim-timeout: must be a finite number of seconds"),
        (["--claim-timeout", "nan", PROBE], "must be a finite number of seconds >= 0; got 'nan'"),
    ],
)
def test_bad_runner_options_are_one_line_and_exit_2(args, message):
    result = pinbackend_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cores-per-worker", "999"],
            "--cores-per-worker 999: a worker needs 999 physical cores but the job has only",
        ),
        (
            ["--cores", str(ALLOWED[0]), "--cores-per-worker", "2"],
            f"the job has only 1 (CPUs {ALLOWED[0]}: the allowed CPUs, within --cores "
            f"{ALLOWED[0]}); use --cores-per-worker 1 or less, or give the job more cores",
        ),
        (
            ["--reserve", ",".join(map(str, ALLOWED))],
            "leaves the job no CPU: it reserves every CPU the job may use",
        ),
    ],
)
def test_options_that_can_never_fit_are_refused_before_the_program_starts(
    tmp_path, args, message, dry_run
):
    marker = tmp_path / "ran"
    script = tmp_path / "job.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = pinbackend_cli(*(["--dry-run"] if dry_run else []), *args, str(script))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("pinbackend: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not marker.exists() and result.stdout == ""


def test_help_shows_both_forms_and_every_runner_option():
    out = pinbackend_cli("--help", check=True).stdout
    assert "python -m pinbackend [options] SCRIPT [ARGS...]" in out
    assert "-m MODULE" in out and "status" in out and "./NAME or after --" in out
    for flag in ("--processes", "--cores", "--reserve", "--threads", "--oversubscribe"):
        assert flag in out
    # Asking for help among runner options shows the same page, and runs nothing.
    assert pinbackend_cli("-p", "2", "--help", PROBE, "exit3", check=True).stdout == out


def test_a_script_named_like_a_subcommand_runs_after_double_dash(tmp_path):
    script = tmp_path / "status"
    script.write_text("print('I am a script called status')\n")
    result = pinbackend_cli("--", str(script), check=True)
    assert result.stdout == "I am a script called status\n"
    assert "lease registry" in pinbackend_cli("status", check=True).stdout


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "job.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    out = pinbackend_cli("--dry-run", "-p", "1", str(script), check=True).stdout
    assert not marker.exists()
    assert f"would run: python {script}" in out and "core map" in out
    data = json.loads(pinbackend_cli("--dry-run", "--json", str(script), check=True).stdout)
    assert data["workers"] == [[cpu] for cpu in ALLOWED]
    assert data["job_cpus"] == ALLOWED and data["policy"] == "clamp"


def test_dry_run_clamps_p_with_a_note_and_errors_with_error_policy():
    too_many = str(len(ALLOWED) + 1)
    data = json.loads(pinbackend_cli("--dry-run", "--json", "-p", too_many, PROBE).stdout)
    assert len(data["workers"]) == len(ALLOWED)
    assert f"instead of {too_many} (-p {too_many})" in data["note"]
    strict = ["--oversubscribe", "error", "-p", too_many]
    data = json.loads(pinbackend_cli("--dry-run", "--json", *strict, PROBE).stdout)
    assert (
        data["workers"] == [] and f"asks for {too_many} workers (-p {too_many})" in (data["error"])
    )


def test_dry_run_plans_a_bigger_machine_from_a_snapshot(snapshot_root):
    root = str(snapshot_root("64amd64-4s2n4ca2co"))
    args = ["--dry-run", "--json", "--root", root, "-p", "8", "--reserve", "0", PROBE]
    data = json.loads(pinbackend_cli(*args, check=True).stdout)
    workers = [set(w) for w in data["workers"]]
    assert len(workers) == 8 and 0 not in set().union(*workers)
    assert all(not (a & b) for i, a in enumerate(workers) for b in workers[i + 1 :])
    human = pinbackend_cli("--dry-run", "--root", root, "-p", "8", PROBE, check=True).stdout
    assert "NUMA node" in human and "a process pool (-p 8, policy clamp)" in human


def test_dry_run_of_a_missing_script_fails_like_python():
    result = pinbackend_cli("--dry-run", "/no/such/script.py")
    assert result.returncode == 2
    assert "can't open file '/no/such/script.py': [Errno 2]" in result.stderr


def test_every_runner_warning_links_to_a_troubleshooting_entry():
    import pinbackend.runner  # noqa: F401 (defines the runner's own warning)
    from pinbackend.host.notices import PinbackendWarning

    text = (Path(__file__).parent.parent / "docs" / "troubleshooting.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    categories = PinbackendWarning.__subclasses__()
    assert len(categories) == 5  # resized, shared, waiting, host registry refused, the runner's
    for category in categories:
        assert category.anchor in anchors, category
    assert "workers-share-core-sets" in anchors  # re-emitted planner warning
