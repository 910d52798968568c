"""One warning per host for what a cluster's workers there had to do (clamp, share).

Workers are separate processes that start together: each one that is closed or shares
knows the host's shape, and each would warn. They agree on one through a small record in
the lease registry, one per cluster and outcome, written under a kernel lock:

- the first worker to take the lock finds no record (or a stale one), writes one and warns;
- the others find it *fresh* and only log at INFO.

A record is fresh while one of the leases it names (the cluster's workers that held slots
on this host when it was written) is still held, or for :data:`FRESH_SECONDS` after it was
written (a cluster none of whose workers got a slot). So a new cluster on the same scheduler
address, or the same cluster after every worker restarted, warns again; nothing has to be
removed for that. Records older than :data:`COLLECT_SECONDS` are removed by the next writer.
Any failure here means "warn": a warning twice is better than none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable

from .. import _platform
from ..host.holders import list_leases
from ..host.registry import (
    LeaseError,
    open_file,
    private_dir,
    read_record,
    registry_dir,
    write_record,
)

__all__ = ["COLLECT_SECONDS", "FRESH_SECONDS", "first_on_host"]

#: A record no lease keeps alive still counts for this long (workers closing together).
FRESH_SECONDS = 60.0
#: Records older than this are removed by the next worker that writes one.
COLLECT_SECONDS = 86400.0
_FOLDER = "dask-notices"
_LOCK_ATTEMPTS = 200
_LOCK_POLL = 0.01


def first_on_host(key: str, lease_ids: Iterable[str]) -> bool:
    """Whether this worker is the first on this host to tell about ``key`` (and record it).

    ``key`` names the cluster and the outcome (scheduler address, policy, shape);
    ``lease_ids`` are the cluster's leases on this host now, which keep the record fresh.
    """
    try:
        folder = private_dir(registry_dir() / _FOLDER)
        path = folder / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
        fd = open_file(path)
    except (LeaseError, OSError):
        return True
    if fd is None:
        return True  # removed meanwhile
    try:
        if not _lock(fd):
            return True
        record = read_record(fd) or {}
        if record.get("key") == key and _fresh(record):
            return False
        data = json.dumps({"key": key, "leases": sorted(lease_ids), "time": time.time()})
        write_record(fd, data.encode())
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the lock
    _collect(folder, path.name)
    return True


def _lock(fd: int) -> bool:
    for _ in range(_LOCK_ATTEMPTS):
        if _platform.lock_exclusive(fd):
            return True
        time.sleep(_LOCK_POLL)
    return False


def _fresh(record: dict) -> bool:
    written = record.get("time")
    if isinstance(written, int | float) and 0 <= time.time() - written < FRESH_SECONDS:
        return True
    named = record.get("leases")
    if not isinstance(named, list) or not named:
        return False
    try:
        live = {info.lease_id for info in list_leases("")}
    except LeaseError:
        return False
    return any(lease_id in live for lease_id in named)


def _collect(folder, keep: str) -> None:
    """Remove records nobody has written for a day (best effort)."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name == keep or not entry.name.endswith(".json"):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > COLLECT_SECONDS:
                    os.unlink(entry.path)
