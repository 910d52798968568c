"""Shared fixtures and the harness's hygiene checks (no leaked processes or env changes),
and the suite's hang guard."""

from __future__ import annotations

import faulthandler
import os
import tarfile
import time
from pathlib import Path

import psutil
import pytest
import pytest_timeout
from _host_site import alice, bob, site  # noqa: F401  (the two-user tests' users and host)
from _users import python_for_users  # noqa: F401  (the two-user tests' shared interpreter)

from pinbackend.host.caps import THREAD_ENV_VARS as CAP_VARS

TOPOLOGIES = Path(__file__).parent / "data" / "topologies"
SNAPSHOTS = sorted(p.name.removesuffix(".tar.bz2") for p in TOPOLOGIES.glob("*.tar.bz2"))

# Thread-count variables a test must never leave changed in the test process itself.
THREAD_ENV_VARS = (*CAP_VARS, "PYTHON_CPU_COUNT", "PINBACKEND_SCOPE", "PINBACKEND_SLOT")

# The hang guard (docs/testing.md). pytest-timeout's signal method (`timeout` in pyproject,
# or a test's `@pytest.mark.timeout(N)`) fails a test that runs past its limit, prints every
# thread's Python stack and the run goes on. Its SIGALRM handler is Python code, so it runs
# only when the main thread gets back to the interpreter: a test deadlocked inside C with
# the GIL held (dlopen waiting for the loader's lock, say) never gets there. For that case
# faulthandler's watchdog, a C thread that needs no GIL, prints every thread's stack and ends
# pytest `hang_guard_grace` seconds after the graceful timeout was due, so one hung test
# costs its limit plus the grace, never CI's whole limit. The watchdog is process-wide and
# holds one deadline: pytest's own `faulthandler_timeout` would re-arm it, so it is refused.

#: Where the watchdog writes: a copy of stderr taken before pytest captures fd 2 per test.
_GUARD_FD = pytest.StashKey[int]()
#: The monotonic time at which the watchdog ends the pytest process for this test.
_GUARD_DEADLINE = pytest.StashKey[float]()
#: After a graceful timeout, pytest-timeout leaves the test's teardown to run: its fixtures
#: stop pools, clusters and children, and the leak check waits up to 15 s for exits. 60 s
#: covers that with room on a busy 2-core machine; past it, the teardown is hung too.
HANG_GUARD_GRACE = 60.0
#: Collection imports every test module; it takes about 4 s here. Past this, an import hung.
COLLECTION_LIMIT = 120.0


def pytest_addoption(parser):
    parser.addini(
        "hang_guard_grace",
        "seconds after a test's timeout before the hang guard dumps every thread's stack and "
        f"ends pytest (default {HANG_GUARD_GRACE:g})",
        default=str(HANG_GUARD_GRACE),
    )


def pytest_configure(config):
    if float(config.getini("faulthandler_timeout") or 0) > 0:
        raise pytest.UsageError(
            "faulthandler_timeout re-arms faulthandler's one watchdog, which the hang guard in "
            "tests/conftest.py uses; leave it unset (the guard dumps stacks, see docs/testing.md)"
        )
    config.stash[_GUARD_FD] = os.dup(2)


def pytest_unconfigure(config):
    if _GUARD_FD in config.stash:
        faulthandler.cancel_dump_traceback_later()
        os.close(config.stash[_GUARD_FD])
        del config.stash[_GUARD_FD]


def _arm_watchdog(config, seconds: float) -> None:
    faulthandler.dump_traceback_later(seconds, exit=True, file=config.stash[_GUARD_FD])


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    _arm_watchdog(session.config, COLLECTION_LIMIT)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout is about to arm its timer (the test's own limit, marker included):
    arm the watchdog for that limit plus the grace. Returns None, so pytest-timeout's timer
    is armed as usual."""
    grace = float(item.config.getini("hang_guard_grace"))
    item.stash[_GUARD_DEADLINE] = time.monotonic() + settings.timeout + grace
    _rearm_watchdog(item)


def _rearm_watchdog(item) -> None:
    # pytest's faulthandler plugin cancels the watchdog whenever a phase fails (its
    # pytest_exception_interact hook, meant for pdb), and pytest-timeout drops its own timer
    # then: each phase re-arms the watchdog, so a teardown that hangs after a failure is
    # still ended. A debugging session (pdb, breakpoint()) is never ended.
    deadline = item.stash.get(_GUARD_DEADLINE, None)
    if deadline is None or pytest_timeout.is_debugging():
        return
    _arm_watchdog(item.config, max(deadline - time.monotonic(), 0.01))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _rearm_watchdog(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _rearm_watchdog(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item):
    _rearm_watchdog(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item):
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()
        if _GUARD_DEADLINE in item.stash:
            del item.stash[_GUARD_DEADLINE]


@pytest.fixture(scope="session")
def snapshot_root(tmp_path_factory):
    """Return a function that unpacks a hwloc snapshot once and gives its root folder."""
    unpacked: dict[str, Path] = {}

    def root(name: str) -> Path:
        if name not in unpacked:
            target = tmp_path_factory.mktemp(name)
            with tarfile.open(TOPOLOGIES / f"{name}.tar.bz2") as archive:
                archive.extractall(target, filter="tar")
            (top,) = [p for p in target.iterdir() if p.is_dir()]
            unpacked[name] = top
        return unpacked[name]

    return root


def _live_children() -> list[psutil.Process]:
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        # multiprocessing's resource tracker is a per-interpreter singleton that outlives
        # every pool by design; it is not a leak of the test.
        if "resource_tracker" in cmdline:
            continue
        children.append(child)
    return children


@pytest.fixture(autouse=True)
def lease_registry(tmp_path_factory, monkeypatch):
    """Give every test its own lease registry, so tests never see the host's real leases
    (nor a host registry `host init` made on this machine: none, unless a test makes one)."""
    from pinbackend.host.hostreg import HOST_REGISTRY_ENV
    from pinbackend.host.registry import REGISTRY_ENV

    directory = tmp_path_factory.mktemp("leases", numbered=True)
    directory.chmod(0o700)
    monkeypatch.setenv(REGISTRY_ENV, str(directory))
    monkeypatch.setenv(HOST_REGISTRY_ENV, str(directory / "no-host-registry"))
    return directory


@pytest.fixture(autouse=True)
def no_leaks(lease_registry):
    """Fail a test that leaves a child process, a held lease or a changed thread env var."""
    from pinbackend.host.holders import list_leases

    env_before = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    yield
    env_after = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    changed = {k: (env_before[k], v) for k, v in env_after.items() if env_before[k] != v}
    leftover = _live_children()
    if leftover:
        # Give processes that are already exiting a moment before calling them leaks.
        _, leftover = psutil.wait_procs(leftover, timeout=5)
    leftover_pids = [p.pid for p in leftover]
    for child in leftover:
        child.kill()
    psutil.wait_procs(leftover, timeout=5)
    leases = list_leases(scope=None)
    # Workers orphaned when their pool's owner was killed (reparented, so not in leftover)
    # exit through their owner watch a moment later: give them the same grace as children.
    deadline = time.monotonic() + 5
    while leases and time.monotonic() < deadline:
        time.sleep(0.1)
        leases = list_leases(scope=None)
    assert not changed, f"test changed thread env vars of the test process: {changed}"
    assert not leftover_pids, f"test left child processes running: {leftover_pids}"
    assert not leases, f"test left core leases held: {leases}"


@pytest.fixture
def process_state():
    """This process's pinbackend state, reset before and after the test
    (:func:`pinbackend.host.state.reset_process_state`), so that what a test sets up in the
    test process itself (a slot, the load watch, a keeper) never reaches the next one."""
    from pinbackend.host.state import STATE, reset_process_state

    reset_process_state()
    yield STATE
    reset_process_state()
