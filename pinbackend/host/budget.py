"""This process's CPU budget, read live: the affinity mask, the cgroup files under ``/`` and
the environment's ``PYTHON_CPU_COUNT``/``PINBACKEND_CPU_COUNT`` (see
:mod:`pinbackend.core.budget` for what each limit means and how they combine).

Read afresh on every call (a few small files): a process can be moved to another cgroup,
and its variables can change, while it runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..core._files import Files
from ..core.budget import Budget, Limit
from ..core.budget import read_budget as _read_budget
from ..core.sysfs import is_live_root
from ..core.topology import Topology
from .holders import LeaseInfo
from .machine import read_topology

__all__ = ["quota_peers", "read_budget"]

_ONLINE = "/sys/devices/system/cpu/online"


def read_budget(
    root: str | os.PathLike = "/",
    *,
    topology: Topology | None = None,
    environ: Mapping[str, str] | None = None,
) -> Budget:
    """The CPU budget of this process (``root="/"``) or of the snapshot under ``root``.

    For this process: the affinity mask (``topology.allowed``), the cgroup cpuset and quotas
    of ``/proc/self``, and the variables of ``environ`` (default ``os.environ``). For a
    snapshot: its online CPUs and its cgroup files, no variables (they belong to this
    process, not to the snapshot's). ``topology`` saves reading the topology again.
    Raises :class:`~pinbackend.core.topology.TopologyError` as ``read_topology`` does.
    """
    topology = read_topology(root) if topology is None else topology
    files = Files(Path(os.fspath(root)))
    if is_live_root(root):
        base = Limit("affinity", len(topology.allowed), "sched_getaffinity")
        environ = os.environ if environ is None else environ
    else:
        base = Limit("online", len(topology.online), _ONLINE)
    return _read_budget(files, base, environ, online=topology.online)


def _cpu_cgroup(pid: int | str) -> str | None:
    """The cgroup path of ``pid`` in the hierarchy that holds CPU quotas (v1 ``cpu``, else
    the v2 unified one); None when it cannot be read (the process is gone, no cgroups)."""
    try:
        with open(f"/proc/{pid}/cgroup") as lines:
            entries = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return None
    for _, controllers, path in (e for e in entries if len(e) == 3):
        if "cpu" in controllers.split(","):
            return path
    return next((path for hierarchy, _, path in entries if hierarchy == "0"), None)


def quota_peers(holders: Iterable[LeaseInfo]) -> frozenset[int]:
    """The CPUs that leases of processes in this process's own CPU cgroup hold.

    A cgroup's quota is shared by every process in it: two jobs in one 1-CPU container
    must not plan one core each. Holders in other cgroups (a nested child cgroup included)
    are not counted.
    """
    own = _cpu_cgroup("self")
    if own is None:
        return frozenset()
    return frozenset().union(
        *(
            info.cores - info.shared
            for info in holders
            if info.pid is not None and _cpu_cgroup(info.pid) == own
        )
    )
