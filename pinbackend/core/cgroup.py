"""This process's cgroup: its cpuset (which CPUs) and CPU quota (how much time), v1 and v2.

Read from ``proc/self/cgroup``, ``proc/self/cpuset`` and ``proc/mounts`` under a root folder,
so the same code serves the live machine and snapshots.
"""

from __future__ import annotations

import posixpath
import re

from ._files import Files, to_int

__all__ = ["cgroup_cpuset", "cpu_quota"]

# cgroup v1 and the old cpuset file system name the same file differently; "effective" first
# because it already excludes what the parent cpusets take away.
_CPUSET_FILES = {
    2: ("cpuset.cpus.effective",),
    1: ("cpuset.effective_cpus", "effective_cpus", "cpuset.cpus", "cpus"),
}


def _unescape(field: str) -> str:
    """Undo the octal escapes of /proc/mounts (``\\040`` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _cgroup_paths(files: Files) -> dict[str, str]:
    """Controller -> this process's cgroup path; key '' is the cgroup v2 unified hierarchy."""
    paths = {}
    for line in (files.text("proc/self/cgroup") or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            paths.update(dict.fromkeys(fields[1].split(","), fields[2]))
    return paths


def _cgroup_folders(files: Files, controller: str) -> list[tuple[int, str]]:
    """(cgroup version, folder) for this process's ``controller``: leaf first, then ancestors."""
    paths = _cgroup_paths(files)
    if controller == "cpuset" and (own := files.text("proc/self/cpuset")):
        paths = dict.fromkeys(("", "cpuset"), own)  # the old cpuset interface, read first
    leaves = []
    for line in (files.text("proc/mounts") or "").splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount, fstype, options = _unescape(fields[1]), fields[2], fields[3].split(",")
        if fstype == "cgroup2" and "" in paths:
            leaves.append((2, mount, paths[""]))
        elif (fstype == "cgroup" and controller in options) or fstype == controller == "cpuset":
            leaves.append((1, mount, paths.get(controller, "/")))
    # Ancestors count too: a parent's limit binds its children, and inside a container whose
    # cgroup path is the host's the mount shows only the container's own cgroup, at its root.
    return [(version, folder) for version, mount, path in leaves for folder in _chain(mount, path)]


def _chain(mount: str, path: str) -> list[str]:
    """Root-relative folders of cgroup ``path`` under ``mount``, then of its ancestors."""
    parts = [part for part in path.split("/") if part]
    return [posixpath.join(mount, *parts[:n]).lstrip("/") for n in range(len(parts), -1, -1)]


def cgroup_cpuset(files: Files) -> frozenset[int] | None:
    """CPUs of this process's cgroup cpuset (nearest folder that has one), None if none."""
    for version, folder in _cgroup_folders(files, "cpuset"):
        cpus = files.cpus(*(f"{folder}/{name}" for name in _CPUSET_FILES[version]))
        if cpus:
            return cpus
    return None


def _quota_fields(files: Files, version: int, folder: str) -> tuple[str, list[str]] | None:
    """The quota file of one cgroup folder and its raw (quota, period); None if no quota."""
    if version == 2:
        rel = f"{folder}/cpu.max"
        fields = (files.text(rel) or "max").split()  # "max 100000": no limit
        return None if fields[0] == "max" else (rel, [*fields, ""][:2])
    rel = f"{folder}/cpu.cfs_quota_us"
    quota = files.text(rel)
    if quota is None or quota == "-1":  # -1: no limit
        return None
    return rel, [quota, files.text(f"{folder}/cpu.cfs_period_us") or ""]


def _quota(files: Files, version: int, folder: str) -> float | None:
    """The CPU quota of one cgroup folder in cores, None when it sets none."""
    found = _quota_fields(files, version, folder)
    if found is None:
        return None
    rel, fields = found
    quota, period = (to_int(field) for field in fields)
    if not quota or not period:
        files.corrupt(rel, " ".join(fields))
        return None
    return quota / period


def cpu_quota(files: Files) -> float | None:
    """The tightest CPU quota (in cores) on this process's cgroup and its ancestors."""
    quotas = (_quota(files, *where) for where in _cgroup_folders(files, "cpu"))
    return min((q for q in quotas if q is not None), default=None)
