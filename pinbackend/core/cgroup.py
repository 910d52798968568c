"""This process's cgroup: its cpuset (which CPUs) and CPU quotas (how much time), v1 and v2.

Read from ``proc/self/cgroup`` (the process's path in each hierarchy), ``proc/self/mountinfo``
(where each hierarchy is mounted, and which of its folders the mount shows at its root) and
the cgroup files under a root folder, so the same code serves the live machine and
snapshots. Snapshots without ``mountinfo`` fall back to ``proc/mounts``.

A cgroup's limits bind its children: the quota is read on the process's own cgroup and on
every ancestor the mount shows, and the smallest counts (loky's ``cpu_count`` reads only the
mount's root, so it misses a quota set on a nested cgroup: loky#634).

How a cgroup path maps to a folder (the ``root`` field of mountinfo is the folder of the
hierarchy the mount shows; both it and ``/proc/self/cgroup`` are relative to the reader's
cgroup namespace):

- root ``/`` (the host, or a container with its own cgroup namespace): the folder is the
  mount point plus the process's path;
- the process's path lies under the root (a container without a cgroup namespace, whose
  mount shows only its own cgroup): the part of the path below the root;
- the process's path lies elsewhere (``/`` in a cgroup namespace whose mount shows the
  container's cgroup by its host path): the mount point itself, without ancestors;
- a root that climbs above the namespace (``/../..``): the process's folder has no name
  this process can see; that hierarchy is skipped, with a note.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ._files import Files, to_int

__all__ = [
    "CgroupMount",
    "cgroup_cpuset",
    "cgroup_folder",
    "cgroup_mounts",
    "cgroup_paths",
    "cpu_quota",
    "cpu_quotas",
    "cpuset",
]

# cgroup v1 and the old cpuset file system name the same file differently; "effective" first
# because it already excludes what the parent cpusets take away.
_CPUSET_FILES = {
    2: ("cpuset.cpus.effective",),
    1: ("cpuset.effective_cpus", "effective_cpus", "cpuset.cpus", "cpus"),
}


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup hierarchy.

    ``version`` is 1 or 2 (the old cpuset file system counts as v1); ``options`` the v1
    controllers and names (``cpu``, ``cpuacct``, ``name=systemd``); ``point`` the mount
    point, root-relative; ``root`` the hierarchy folder shown there (None when only
    ``proc/mounts`` was readable); ``device`` the hierarchy's ``major:minor``, the same for
    every mount of one hierarchy ('' when unknown).
    """

    version: int
    options: frozenset[str]
    point: str
    root: str | None
    device: str = ""

    def has(self, controller: str) -> bool:
        """Whether this hierarchy may hold ``controller``'s files (v2: any controller)."""
        return self.version == 2 or controller in self.options


def _unescape(field: str) -> str:
    """Undo the octal escapes of mountinfo and /proc/mounts (``\\040`` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _mount(fstype: str, point: str, options: str, root: str | None, device: str):
    if fstype == "cgroup2":
        version = 2
    elif fstype in ("cgroup", "cpuset"):  # "cpuset": the old cpuset file system
        version = 1
    else:
        return None
    names = frozenset(options.split(",")) | ({"cpuset"} if fstype == "cpuset" else set())
    return CgroupMount(version, names, _unescape(point).strip("/"), root, device)


def cgroup_mounts(files: Files) -> list[CgroupMount]:
    """The cgroup hierarchies mounted, from ``proc/self/mountinfo`` (else ``proc/mounts``)."""
    mounts = []
    mountinfo = files.text("proc/self/mountinfo")
    if mountinfo is not None:
        # "36 35 0:29 /root /mnt/point rw,relatime shared:1 - cgroup cgroup rw,cpu": the
        # optional fields before " - " vary in number, the three after it do not.
        for line in mountinfo.splitlines():
            head, dash, tail = line.partition(" - ")
            fields, after = head.split(), tail.split()
            if not dash or len(fields) < 5 or len(after) < 3:
                continue
            found = _mount(after[0], fields[4], after[2], _unescape(fields[3]), fields[2])
            if found is not None:
                mounts.append(found)
        return mounts
    for line in (files.text("proc/mounts") or "").splitlines():
        fields = line.split()
        if len(fields) >= 4:
            found = _mount(fields[2], fields[1], fields[3], None, "")
            if found is not None:
                mounts.append(found)
    return mounts


def cgroup_paths(files: Files) -> dict[str, str]:
    """Controller -> this process's cgroup path; key '' is the cgroup v2 unified hierarchy."""
    paths = {}
    for line in (files.text("proc/self/cgroup") or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            paths.update(dict.fromkeys(fields[1].split(","), fields[2]))
    return paths


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def _folders_in(files: Files, mount: CgroupMount, path: str) -> list[str]:
    """Root-relative folders of cgroup ``path`` in ``mount``, then of its visible ancestors."""
    parts = _parts(path)
    if mount.root is None:
        # proc/mounts does not say which folder the mount shows: try the whole path, then
        # each shorter one, down to the mount point (a container's mount that shows only its
        # own cgroup, while its path is the host's, is found there).
        return [posixpath.join(mount.point, *parts[:n]) for n in range(len(parts), -1, -1)]
    root = _parts(mount.root)
    if ".." in root:
        files.note(
            f"cgroup mount /{mount.point} starts above this process's cgroup namespace "
            f"(root {mount.root}): its limits are not read"
        )
        return []
    if parts[: len(root)] != root:
        return [mount.point]  # a namespace's own cgroup, shown by its outside name
    below = parts[len(root) :]
    return [posixpath.join(mount.point, *below[:n]) for n in range(len(below), -1, -1)]


def cgroup_folder(files: Files, mount: CgroupMount) -> str | None:
    """The root-relative folder of this process's own cgroup in ``mount``; None if unknown."""
    paths = cgroup_paths(files)
    keys = [""] if mount.version == 2 else sorted(mount.options)
    path = next((paths[key] for key in keys if key in paths), None)
    if path is None:
        return None
    folders = _folders_in(files, mount, path)
    return folders[0] if folders else None


def _shows(mount: CgroupMount, path: str) -> bool:
    """Whether ``mount`` shows cgroup ``path`` (its root lies on that path)."""
    root = _parts(mount.root) if mount.root is not None else None
    return root is not None and ".." not in root and _parts(path)[: len(root)] == root


def _hierarchies(files: Files, controller: str) -> list[tuple[CgroupMount, str]]:
    """(mount, this process's path in it) for each hierarchy that may hold ``controller``."""
    paths = cgroup_paths(files)
    if controller == "cpuset" and (own := files.text("proc/self/cpuset")):
        paths = dict.fromkeys(("", "cpuset"), own)  # the old cpuset interface, read first
    chosen: dict[tuple, tuple[CgroupMount, str]] = {}
    for mount in cgroup_mounts(files):
        if not mount.has(controller) or (mount.version == 2 and "" not in paths):
            continue
        path = paths.get("" if mount.version == 2 else controller, "/")
        # One hierarchy can be mounted several times: keep one mount of it, preferring one
        # that shows the process's own cgroup.
        key = (mount.version, mount.device or mount.options)
        if key not in chosen or (_shows(mount, path) and not _shows(*chosen[key])):
            chosen[key] = (mount, path)
    return list(chosen.values())


def _cgroup_folders(files: Files, controller: str) -> list[tuple[int, str]]:
    """(cgroup version, folder) for this process's ``controller``: leaf first, then ancestors."""
    folders: list[tuple[int, str]] = []
    for mount, path in _hierarchies(files, controller):
        for folder in _folders_in(files, mount, path):
            if (mount.version, folder) not in folders:
                folders.append((mount.version, folder))
    return folders


def cpuset(files: Files) -> tuple[frozenset[int], str] | None:
    """This process's cgroup cpuset and the file it came from (root-relative), None if none.

    The nearest folder that has one counts: the effective sets already exclude what the
    ancestors take away.
    """
    for version, folder in _cgroup_folders(files, "cpuset"):
        for name in _CPUSET_FILES[version]:
            rel = f"{folder}/{name}"
            cpus = files.cpus(rel)
            if cpus:
                return cpus, rel
    return None


def cgroup_cpuset(files: Files) -> frozenset[int] | None:
    """CPUs of this process's cgroup cpuset (nearest folder that has one), None if none."""
    found = cpuset(files)
    return None if found is None else found[0]


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


def _quota(files: Files, version: int, folder: str) -> tuple[float, str] | None:
    """The CPU quota of one cgroup folder in CPUs and its file, None when it sets none."""
    found = _quota_fields(files, version, folder)
    if found is None:
        return None
    rel, fields = found
    quota, period = (to_int(field) for field in fields)
    if not quota or not period:
        files.corrupt(rel, " ".join(fields))
        return None
    return quota / period, rel


def cpu_quotas(files: Files) -> list[tuple[float, str]]:
    """Every CPU quota (in CPUs) on this process's cgroup and its ancestors, with its file
    (root-relative): the process's own cgroup first. The smallest one binds."""
    quotas = (_quota(files, *where) for where in _cgroup_folders(files, "cpu"))
    return [quota for quota in quotas if quota is not None]


def cpu_quota(files: Files) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors."""
    return min((quota for quota, _ in cpu_quotas(files)), default=None)
