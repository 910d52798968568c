"""This process's CPU budget, read live: the affinity mask, the cgroup files under ``/`` and
the environment's ``PYTHON_CPU_COUNT``/``PINBACKEND_CPU_COUNT`` (see
:mod:`pinbackend.core.budget` for what each limit means and how they combine).

Read afresh on every call (a few small files): a process can be moved to another cgroup,
and its variables can change, while it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..core._files import Files
from ..core.budget import Budget, Limit
from ..core.budget import read_budget as _read_budget
from ..core.sysfs import is_live_root
from ..core.topology import Topology
from .machine import read_topology

__all__ = ["read_budget"]

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
