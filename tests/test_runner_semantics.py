"""The runner runs a program exactly as python does: compared side by side, for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest
from _helpers import PYTHON

SCRIPTS = Path(__file__).parent / "scripts"
PROBE = SCRIPTS / "probe.py"

pytestmark = pytest.mark.slow


def run(*command: str, cwd: Path | str = SCRIPTS.parent, timeout: float = 60):
    """Run a command line, text mode, capturing both streams."""
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=os.environ
    )


def both(*args: str, cwd: Path | str = SCRIPTS.parent):
    """The same program under plain python and under the runner."""
    return run(PYTHON, *args, cwd=cwd), run(PYTHON, "-m", "pinbackend", *args, cwd=cwd)


def report(result) -> dict:
    return json.loads(result.stdout.splitlines()[0])


@pytest.mark.parametrize(
    "script",
    [
        "scripts/probe.py",  # relative, as typed (the commands run in tests/)
        str(PROBE),  # absolute
    ],
)
def test_argv_path_and_main_match_python(script):
    plain, runner = both(script, "report", "--flag", "-p", "3")
    assert plain.returncode == runner.returncode == 0, runner.stderr
    assert report(runner) == report(plain)
    assert report(runner)["argv"] == [script, "report", "--flag", "-p", "3"]
    assert report(runner)["path"][0] == str(SCRIPTS)
    assert report(runner)["main_is_this_module"] is True


def test_a_symlinked_script_gets_its_real_directory_on_sys_path(tmp_path):
    link = tmp_path / "link.py"
    link.symlink_to(PROBE)
    plain, runner = both(str(link), cwd=tmp_path)
    assert report(runner) == report(plain)
    assert report(runner)["path"][0] == str(SCRIPTS)


def test_main_functions_pickle_into_spawned_workers():
    plain, runner = both(str(PROBE), "pickle")
    assert runner.returncode == 0, runner.stderr
    assert report(runner) == report(plain)
    assert report(runner)["squares"] == [1, 4, 9]


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["-m", "probe", "report", "x"], 0),
        (["-m", "probepkg", "7"], 7),
    ],
)
def test_modules_run_like_python_dash_m(args, status):
    plain, runner = both(*args, cwd=SCRIPTS)
    assert plain.returncode == runner.returncode == status, runner.stderr
    assert report(runner) == report(plain)
    assert report(runner)["argv"][0].endswith(("probe.py", "__main__.py"))


def test_a_directory_with_main_runs_like_python(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text(PROBE.read_text())
    plain, runner = both("app", "report", cwd=tmp_path)
    assert report(runner) == report(plain)


def test_a_zip_file_with_main_runs_like_python(tmp_path):
    archive = tmp_path / "app.pyz"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("__main__.py", PROBE.read_text())
    plain, runner = both(str(archive), "report", "x", cwd=tmp_path)
    assert plain.returncode == runner.returncode == 0, runner.stderr
    assert report(runner) == report(plain)
    assert report(runner)["path"][0] == str(archive)
    assert report(runner)["loader"] == "zipimporter"


def test_a_programs_own_excepthook_shows_its_uncaught_exception_like_python(tmp_path):
    script = tmp_path / "hooked.py"
    script.write_text(
        "import sys, traceback\n"
        "def hook(kind, error, tb):\n"
        "    frames = [f'{f.filename}:{f.name}' for f in traceback.extract_tb(tb)]\n"
        "    print(f'hook: {kind.__name__}: {error} in {frames}', file=sys.stderr)\n"
        "sys.excepthook = hook\n"
        "def fail():\n"
        "    raise ValueError('boom')\n"
        "fail()\n"
    )
    plain, runner = both(str(script), cwd=tmp_path)
    assert plain.returncode == runner.returncode == 1
    # Called once, with the program's frames only (none of the runner's), as under python.
    assert runner.stderr == plain.stderr
    frames = [f"{script}:<module>", f"{script}:fail"]
    assert runner.stderr == f"hook: ValueError: boom in {frames}\n"


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("exit3", 3),
        ("exitmsg", 1),
        ("raise", 1),
        ("osexit", 5),
        ("interrupt", -signal.SIGINT),
    ],
)
def test_exit_status_and_error_output_match_python(action, status):
    plain, runner = both(str(PROBE), action)
    assert plain.returncode == runner.returncode == status
    # Same traceback, without a single frame of pinbackend's.
    assert runner.stderr == plain.stderr
    assert runner.stdout == plain.stdout


def test_syntax_errors_and_missing_targets_match_python(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    for args in ([str(broken)], [str(tmp_path / "missing.py")], ["-m", "no_such_module_x"]):
        plain, runner = both(*args)
        assert (runner.returncode, runner.stderr) == (plain.returncode, plain.stderr), args


def test_the_main_process_keeps_its_environment_and_affinity():
    code = str(SCRIPTS / "main_report.py")
    plain, runner = both(code)
    for key in ("env", "affinity", "threads"):
        if key == "threads":
            # Thread ids differ; the set of masks must not.
            assert {tuple(m) for m in report(runner)[key].values()} == {
                tuple(m) for m in report(plain)[key].values()
            }
        else:
            assert report(runner)[key] == report(plain)[key]
    assert report(runner)["slot"] is None


def test_the_runner_leaves_warnings_display_to_the_program(tmp_path):
    script = tmp_path / "warns.py"
    script.write_text("import warnings\nwarnings.warn('from the program')\n")
    plain, runner = both(str(script))
    assert runner.stderr == plain.stderr
    assert "pinbackend" not in runner.stderr
