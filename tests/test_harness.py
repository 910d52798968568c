"""The harness's own hygiene check fails a test that leaks, as promised in conftest.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_no_leaks_fails_tests_that_leave_a_child_a_variable_or_a_lease(tmp_path):
    conftest = Path(__file__).with_name("conftest.py").read_text()
    (tmp_path / "conftest.py").write_text(conftest)
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
