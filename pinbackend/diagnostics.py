"""What a process actually runs on, read back from the kernel and threadpoolctl.

Workers call :func:`process_report` to show their placement (the Dask placement view, the
examples, and the tests, which assert on it from inside real worker processes).
"""

from __future__ import annotations

import os
import socket

from . import _platform
from .host.caps import THREAD_ENV_VARS
from .host.slot import current_slot

__all__ = ["process_report"]


def process_report() -> dict:
    """Return pid, host, each thread's CPUs, the applied slot and the thread pools' sizes."""
    from threadpoolctl import threadpool_info

    try:
        threads = {tid: sorted(cpus) for tid, cpus in _platform.thread_affinities().items()}
    except (OSError, _platform.AffinityUnavailable):
        threads = {}
    slot = current_slot()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "affinity": sorted(_platform.allowed_cpus()),
        "threads": threads,
        "slot": slot.to_dict() if slot is not None else None,
        "cpu_count": os.cpu_count(),
        "thread_pools": [
            {k: pool.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
            for pool in threadpool_info()
        ],
        "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
    }
