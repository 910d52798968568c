"""pytest plugin: run scikit-learn's own test modules with "pinned" as joblib's backend.

Loaded with ``-p sklearn_pinned`` (see pytest.ini). ``--pinned-mode`` (or the variable
``PINBACKEND_SKLEARN_MODE``) chooses how scikit-learn's unmodified code meets the backend:

``default``
    "pinned" becomes joblib's default backend, as with
    ``register_parallel_backend("pinned", PinnedBackend, make_default=True)``: every
    ``Parallel`` without a backend and outside any ``parallel_config`` uses it, with joblib's
    ``n_jobs=None`` rules unchanged.
``config``
    one ``parallel_config(backend="pinned")`` is entered for the whole session. joblib keeps
    that config per thread: it is entered in ``pytest_configure``, on the thread that then
    collects and runs every test, so modules that ask joblib for its active backend at
    import (``test_forest``) already see "pinned"; it is left in ``pytest_unconfigure``.
``loky``
    nothing changes: the baseline run with joblib's own default, loky.

In every mode each test's setup checks that the mode is in force on the thread about to run
it (a test that leaves a ``parallel_config`` open would otherwise change the next tests'
backend silently), and ``--outcomes FILE`` writes every test's outcome, the tracebacks of
failures and how many ``Parallel`` calls ran on which backend (inline or in workers) as JSON,
for ``run_suites.py`` to compare the modes with loky. The known exceptions of a mode are
strict xfails (an unexpected pass fails the run), each with its reason; docs/joblib.md
lists them too.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import joblib
import joblib.parallel
import pytest

import pinbackend  # registers "pinned"
from pinbackend import PinnedBackend

MODE_ENV = "PINBACKEND_SKLEARN_MODE"
MODES = ("default", "config", "loky")

#: (mode, test id without its module path) -> why it is expected to fail in that mode.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

_state: dict = {}


def pytest_addoption(parser):
    group = parser.getgroup("sklearn_pinned", "scikit-learn's tests with the pinned backend")
    group.addoption(
        "--pinned-mode",
        choices=MODES,
        default=None,
        help=f"how 'pinned' is made joblib's backend (default: ${MODE_ENV}, else 'default')",
    )
    group.addoption(
        "--outcomes",
        default=None,
        metavar="FILE",
        help="write every test's outcome and the backends Parallel used as JSON to FILE",
    )


def _mode(config) -> str:
    mode = config.getoption("pinned_mode") or os.environ.get(MODE_ENV) or "default"
    if mode not in MODES:
        raise pytest.UsageError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def _name(backend) -> str:
    return "pinned" if type(backend) is PinnedBackend else type(backend).__name__


def _where(asked, final, n_jobs: int) -> str:
    """ "inline", "workers" of the backend asked for, or the other backend's workers."""
    if n_jobs == 1:
        return "inline"
    return "workers" if final is asked else f"-> {_name(final)} workers"


def _count_parallel_calls() -> Counter:
    """Count every Parallel call by the backend that ran it and whether it ran inline."""
    calls: Counter = Counter()
    original = joblib.parallel.Parallel._initialize_backend
    local = threading.local()

    def _initialize_backend(self):
        if getattr(local, "inside", False):  # joblib's fallback recursion: count once
            return original(self)
        asked = self._backend  # before a fallback (to inline, for n_jobs=1) replaces it
        local.inside = True
        try:
            n_jobs = original(self)
        finally:
            local.inside = False
        calls[f"{_name(asked)} {_where(asked, self._backend, n_jobs)}"] += 1
        return n_jobs

    joblib.parallel.Parallel._initialize_backend = _initialize_backend
    _state["restore_initialize"] = original
    return calls


def pytest_configure(config):
    mode = _mode(config)
    _state.update(mode=mode, outcomes={}, started=time.monotonic())
    _state["calls"] = _count_parallel_calls()
    _state["thread"] = threading.get_ident()
    if mode == "default":
        _state["previous_default"] = joblib.parallel.DEFAULT_BACKEND
        joblib.register_parallel_backend("pinned", PinnedBackend, make_default=True)
    elif mode == "config":
        context = joblib.parallel_config(backend="pinned")
        context.__enter__()
        _state["context"] = context
    for marker in ("thread_unsafe", "parallel_threads", "iterations"):
        config.addinivalue_line("markers", f"{marker}: used by scikit-learn's own tests")


def pytest_unconfigure(config):
    if "context" in _state:
        _state.pop("context").__exit__(None, None, None)
    if "previous_default" in _state:
        joblib.parallel.DEFAULT_BACKEND = _state.pop("previous_default")
    if "restore_initialize" in _state:
        joblib.parallel.Parallel._initialize_backend = _state.pop("restore_initialize")
    pinbackend.shutdown_workers()


def _short_id(item_or_nodeid) -> str:
    nodeid = getattr(item_or_nodeid, "nodeid", item_or_nodeid)
    return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid


def pytest_collection_modifyitems(config, items):
    """Mark the known exceptions of this mode as strict xfails."""
    mode = _state["mode"]
    for item in items:
        reason = KNOWN_EXCEPTIONS.get((mode, _short_id(item)))
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def _mode_in_force() -> str | None:
    """Why the chosen mode is not in force on this thread, or None."""
    mode = _state["mode"]
    backend, _ = joblib.parallel.get_active_backend()
    config = getattr(joblib.parallel._backend, "config", joblib.parallel.default_parallel_config)
    has_context = config is not joblib.parallel.default_parallel_config
    if threading.get_ident() != _state["thread"]:
        return "the test runs on another thread than the one pytest_configure ran on"
    if mode == "default":
        if joblib.parallel.DEFAULT_BACKEND != "pinned" or has_context:
            return f"DEFAULT_BACKEND={joblib.parallel.DEFAULT_BACKEND!r}, context={has_context}"
    elif mode == "config":
        if config is not _state["context"].parallel_config:
            return f"the session's parallel_config is not the active one ({backend!r} is)"
    elif joblib.parallel.DEFAULT_BACKEND != "loky" or has_context:
        return f"DEFAULT_BACKEND={joblib.parallel.DEFAULT_BACKEND!r}, context={has_context}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    problem = _mode_in_force()
    if problem is not None:
        raise RuntimeError(f"mode {_state['mode']!r} is not in force for {item.nodeid}: {problem}")


def pytest_runtest_logreport(report):
    """Keep one outcome per test: an error in setup or teardown wins over the call's."""
    outcomes = _state["outcomes"]
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = report.outcome
        outcomes[report.nodeid] = {"outcome": outcome, "duration": round(report.duration, 3)}
    elif report.when == "teardown" and report.failed:
        outcomes.setdefault(report.nodeid, {"duration": 0.0})["outcome"] = "error"
    else:
        return
    if report.failed:
        entry = outcomes[report.nodeid]
        entry["longrepr"] = entry.get("longrepr", "") + str(report.longrepr)[-6000:]


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("outcomes")
    if not path:
        return
    result = {
        "mode": _state["mode"],
        "exitstatus": int(exitstatus),
        "seconds": round(time.monotonic() - _state["started"], 1),
        "joblib": joblib.__version__,
        "parallel_calls": dict(sorted(_state["calls"].items())),
        "tests": _state["outcomes"],
    }
    Path(path).write_text(json.dumps(result, indent=1))
