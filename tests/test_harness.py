"""The harness keeps its promises (conftest.py, _helpers.py): a test that leaks fails, a test
that hangs fails or ends pytest with every thread's stack, a child that hangs shows its stacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import STACK_DUMP_SECONDS, ChildTimedOut, pinbackend_started, run_python

LEAKY_TESTS = """
import os, subprocess, sys

from pinbackend.host.leases import claim


def test_leaves_a_child():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_changes_a_thread_variable():
    os.environ["OMP_NUM_THREADS"] = "3"


def test_keeps_a_lease():
    test_keeps_a_lease.lease = claim({0})


def test_is_clean():
    pass
"""


def copy_harness(folder: Path) -> None:
    """Put the suite's conftest.py, and the modules of tests/ it imports, in ``folder``: a
    session started there finds them as the suite does."""
    here = Path(__file__).parent
    conftest = (here / "conftest.py").read_text()
    local = re.findall(r"^(?:from|import) (_[^_\W]\w*)", conftest, re.M)
    for name in ("conftest", *local):
        (folder / f"{name}.py").write_text((here / f"{name}.py").read_text())


def test_no_leaks_fails_tests_that_leave_a_child_a_variable_or_a_lease(tmp_path):
    copy_harness(tmp_path)
    (tmp_path / "test_leaky.py").write_text(LEAKY_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "300"},  # the short summary is cut to the width
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert "4 passed, 3 errors" in out, out
    errors = dict(re.findall(r"^ERROR test_leaky\.py::(\w+) - AssertionError: (.*)$", out, re.M))
    assert errors["test_leaves_a_child"].startswith("test left child processes"), out
    assert errors["test_changes_a_thread_variable"].startswith("test changed thread env vars"), out
    assert errors["test_keeps_a_lease"].startswith("test left core leases"), out


HANGING_TESTS = """
import ctypes
import threading
import time

import pytest


def _sleep_forever():
    while True:
        time.sleep(0.1)


def _deadlock_holding_the_gil():
    # A default pthread mutex locked twice by one thread: the second lock never returns, and
    # no signal interrupts it. A PyDLL call keeps the GIL, as an import in dlopen does.
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


@pytest.fixture
def helper_thread():
    threading.Thread(target=_sleep_forever, name="helper-sleeper", daemon=True).start()


@pytest.fixture
def deadlocks_in_teardown():
    yield
    _deadlock_holding_the_gil()


@pytest.mark.timeout(2)
def test_stuck_in_python(helper_thread):
    _sleep_forever()


@pytest.mark.timeout(2)
def test_deadlocked_in_c(helper_thread):
    _deadlock_holding_the_gil()


@pytest.mark.timeout(2)
def test_fails_then_deadlocks_in_teardown(helper_thread, deadlocks_in_teardown):
    raise AssertionError("failed on purpose")


def test_after():
    pass
"""

#: The hung tests' limit (their markers) plus the grace given to the guard below.
HUNG_LIMIT, GRACE = 2, 2
#: pytest's start in a fresh interpreter (conftest imports pinbackend and psutil) takes about
#: 2 s here, a few more on a busy 2-core machine; a guard that fails to fire blows past it.
SESSION_BOUND = HUNG_LIMIT + GRACE + 20


def run_hanging(tmp_path, test: str):
    """Run one hanging test, then ``test_after``, in a pytest session of their own: return
    its exit status, output (stdout and stderr) and how long it took."""
    copy_harness(tmp_path)
    (tmp_path / "test_hangs.py").write_text(HANGING_TESTS)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"]
    command += [
        "-o",
        f"hang_guard_grace={GRACE}",
        f"test_hangs.py::{test}",
        "test_hangs.py::test_after",
    ]
    start = time.monotonic()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        # Far above SESSION_BOUND: only a guard that never fires gets here.
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "300"},
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - start


def test_a_test_stuck_in_python_fails_at_its_limit_with_every_threads_stack(tmp_path):
    status, out, took = run_hanging(tmp_path, "test_stuck_in_python")
    assert status == 1 and took < SESSION_BOUND, (took, out)
    # pytest-timeout's graceful failure: the run goes on, the report names the test and shows
    # the other threads' stacks (the main thread's is the failure's own traceback).
    assert "FAILED test_hangs.py::test_stuck_in_python - Failed: Timeout (>2.0s)" in out, out
    assert "Stack of helper-sleeper" in out and "in _sleep_forever" in out, out
    assert "1 failed, 1 passed" in out, out


@pytest.mark.parametrize(
    ("test", "where"),
    [
        pytest.param("test_deadlocked_in_c", "test_deadlocked_in_c", id="in-the-test"),
        # pytest cancels faulthandler's watchdog when a phase fails: the guard re-arms it
        # for the teardown.
        pytest.param(
            "test_fails_then_deadlocks_in_teardown", "deadlocks_in_teardown", id="in-teardown"
        ),
    ],
)
def test_a_test_deadlocked_in_c_holding_the_gil_ends_pytest_with_every_threads_stack(
    tmp_path, test, where
):
    status, out, took = run_hanging(tmp_path, test)
    # SIGALRM's handler never ran (the GIL is held): the guard ended pytest at the test's
    # limit plus the grace, and the tests after it never ran.
    assert status == 1 and HUNG_LIMIT + GRACE <= took < SESSION_BOUND, (took, out)
    assert "Timeout (0:00:0" in out and "test_after" not in out, out
    # faulthandler's dump: every thread, the deadlocked main thread named by its frames.
    stacks = out.split("Timeout (0:00:0", 1)[1]
    assert 'test_hangs.py", line ' in stacks and f" in {where}\n" in stacks, out
    assert " in _deadlock_holding_the_gil\n" in stacks and " in _sleep_forever\n" in stacks, out


#: A child that naps in two threads: its stacks show both.
NAPPING_CHILD = """
import threading, time

def nap():
    time.sleep(60)

threading.Thread(target=nap).start()
print("up", flush=True)
nap()
"""
#: The children below nap for 60 s; this stops them well before, and the bound on the test
#: below is this plus STACK_DUMP_SECONDS plus the start of a Python child, with room.
CHILD_TIMEOUT = 3


def check_stopped_with_stacks(error: ChildTimedOut, took: float) -> None:
    message = str(error)
    assert took < CHILD_TIMEOUT + STACK_DUMP_SECONDS + 10, (took, message)
    assert f"still running after {CHILD_TIMEOUT} s" in message, message
    # faulthandler's dump on SIGABRT: the main thread and the other one, both in nap().
    assert "Fatal Python error: Aborted" in message, message
    assert message.count(", line 5 in nap\n") == 2 and " in <module>\n" in message, message


def test_a_child_past_its_timeout_is_stopped_and_shows_every_threads_stack():
    start = time.monotonic()
    with pytest.raises(ChildTimedOut) as error:
        run_python(NAPPING_CHILD, timeout=CHILD_TIMEOUT)
    check_stopped_with_stacks(error.value, time.monotonic() - start)
    assert "the end of its stdout:\nup" in str(error.value)


@pytest.mark.parametrize("prints", [False, True], ids=["never-prints", "never-exits"])
def test_a_started_program_past_its_timeout_is_stopped_and_shows_its_stacks(prints):
    # Through `run`, which execs the program: PYTHONFAULTHANDLER reaches it.
    code = NAPPING_CHILD if prints else NAPPING_CHILD.replace('print("up", flush=True)', "")
    start = time.monotonic()
    with (
        pytest.raises(ChildTimedOut) as error,
        pinbackend_started("run", "--", sys.executable, "-c", code, timeout=CHILD_TIMEOUT) as (
            _,
            line,
        ),
    ):
        assert line == "up\n"
    check_stopped_with_stacks(error.value, time.monotonic() - start)


def test_the_ci_command_runs_under_the_hang_guard(request):
    # .ci/run runs tox; tox runs pytest with pyproject's settings and tests/conftest.py.
    config = request.config
    assert float(config.getini("timeout")) > 0 and config.getini("timeout_method") == "signal"
    assert config.pluginmanager.hasplugin("timeout")
    tox = (Path(__file__).parent.parent / "tox.ini").read_text()
    pytest_lines = [line for line in tox.splitlines() if "pytest" in line and "python" in line]
    assert pytest_lines, tox
    for line in pytest_lines:
        assert "timeout" not in line, line  # no -p no:timeout, no --timeout 0
