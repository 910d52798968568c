"""This machine as the planner sees it: the topology read once, the affinity mask read live.

The pure reader (:func:`pinbackend.core.sysfs.read_topology`) takes every live input as an
argument; this module supplies them: the calling thread's allowed CPUs, read afresh on every
call (``taskset`` or a cgroup may change them while we run), and the packages, cores and
caches, read once per process (tens of milliseconds on large machines).
"""

from __future__ import annotations

import dataclasses
import functools
import os

from .. import _platform
from ..core import sysfs
from ..core.topology import Topology

__all__ = ["clear_topology_cache", "read_topology"]


def read_topology(root: str | os.PathLike = "/") -> Topology:
    """The topology under ``root``: this machine for ``"/"`` (allowed CPUs from the calling
    thread's affinity mask), else the snapshot there (allowed CPUs from its cgroup cpuset)."""
    if not sysfs.is_live_root(root):
        return sysfs.read_topology(root)
    machine = _live_machine()
    allowed = _platform.allowed_cpus() & machine.online or machine.online
    if allowed == machine.allowed:
        return machine
    return dataclasses.replace(machine, allowed=allowed)


@functools.lru_cache(maxsize=1)
def _live_machine() -> Topology:
    return sysfs.read_topology(os.sep, allowed=_platform.allowed_cpus(), source="live")


def clear_topology_cache() -> None:
    """Forget the cached live topology (after CPU hotplug or a cgroup change)."""
    _live_machine.cache_clear()
