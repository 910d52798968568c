"""Shared fixtures and the harness's hygiene checks (no leaked processes or env changes)."""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from pinbackend.host.caps import THREAD_ENV_VARS as CAP_VARS

TOPOLOGIES = Path(__file__).parent / "data" / "topologies"
SNAPSHOTS = sorted(p.name.removesuffix(".tar.bz2") for p in TOPOLOGIES.glob("*.tar.bz2"))

# Thread-count variables a test must never leave changed in the test process itself.
THREAD_ENV_VARS = (*CAP_VARS, "PYTHON_CPU_COUNT", "PINBACKEND_SCOPE", "PINBACKEND_SLOT")


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
    """Give every test its own lease registry, so tests never see the host's real leases."""
    from pinbackend.host.leases import REGISTRY_ENV

    directory = tmp_path_factory.mktemp("leases", numbered=True)
    directory.chmod(0o700)
    monkeypatch.setenv(REGISTRY_ENV, str(directory))
    return directory


@pytest.fixture(autouse=True)
def no_leaks(lease_registry):
    """Fail a test that leaves a child process, a held lease or a changed thread env var."""
    from pinbackend.host.leases import list_leases

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
