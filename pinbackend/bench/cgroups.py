"""Make a child cgroup with a CPU quota or a cpuset, run commands in it, remove it afterwards.

For the benchmark's ``container`` workload (a job in a container with a 1-CPU quota) and for
the tests that check the CPU budget against real cgroups. Needs write access to a cgroup
hierarchy with the ``cpu`` (for a quota) or ``cpuset`` (for CPUs) controller: root, or a
delegated cgroup v2 subtree. Both versions are used: v2 where the process's own cgroup
already lets its children have the controller (``cgroup.subtree_control``), else v1.

The child is made under the calling process's own cgroup, named
``pinbackend-<tag>-<pid>``; a process joins it by writing its pid to ``cgroup.procs``
(:meth:`ChildCgroup.prefix` does it in a shell that then ``exec``s the command). On exit
the processes still inside are moved back and every folder made is removed; folders left by
a killed run (their pid is gone) are removed by the next one.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ..core._files import Files
from ..core.cgroup import CgroupMount, cgroup_folder, cgroup_mounts

__all__ = ["CgroupUnavailable", "ChildCgroup", "child_cgroup"]

_PERIOD_US = 100_000
_PREFIX = "pinbackend-"


class CgroupUnavailable(RuntimeError):
    """No child cgroup can be made here; the message says why."""


@dataclass
class ChildCgroup:
    """A child cgroup made by :func:`child_cgroup`.

    ``joins`` are the ``cgroup.procs`` files a process writes its pid to (one per hierarchy);
    ``limits`` maps ``"quota"``/``"cpuset"`` to the file that holds the limit, which is
    an ancestor's when the cgroup is ``nested``.
    """

    joins: list[Path] = field(default_factory=list)
    limits: dict[str, Path] = field(default_factory=dict)
    made: list[Path] = field(default_factory=list)
    home: dict[Path, Path] = field(default_factory=dict)

    def prefix(self) -> list[str]:
        """Words to put before a command so that it runs inside this cgroup."""
        moves = " && ".join(f"echo $$ > {shlex.quote(str(path))}" for path in self.joins)
        return ["/bin/sh", "-c", f'{moves} && exec "$@"', "sh"]

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup."""
        for path in self.joins:
            path.write_text(f"{pid}\n")


def _own(files: Files, mount: CgroupMount) -> Path | None:
    folder = cgroup_folder(files, mount)
    return None if folder is None else Path("/", folder)


def _delegates(folder: Path, controller: str) -> bool:
    try:
        return controller in (folder / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def _hierarchy(files: Files, controller: str) -> tuple[int, Path]:
    """(version, own folder) of the hierarchy a child with ``controller`` can be made in."""
    mounts = cgroup_mounts(files)
    for mount in mounts:
        own = _own(files, mount) if mount.version == 2 else None
        if own is not None and _delegates(own, controller):
            return 2, own
    for mount in mounts:
        if mount.version == 1 and controller in mount.options:
            own = _own(files, mount)
            if own is not None and own.is_dir():
                return 1, own
    raise CgroupUnavailable(
        f"no cgroup hierarchy here lets this process make a child with the {controller} "
        f"controller (no cgroup v1 {controller} hierarchy mounted, and cgroup v2 does not "
        f"delegate {controller} to the children of this process's cgroup)"
    )


def _sweep(parent: Path) -> None:
    """Remove cgroups made by earlier runs whose process is gone (best effort)."""
    with contextlib.suppress(OSError):
        for folder in parent.glob(f"{_PREFIX}*-*"):
            pid = folder.name.rsplit("-", 1)[1]
            if pid.isdecimal() and not psutil.pid_exists(int(pid)):
                for inner in sorted(folder.glob("**/"), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        inner.rmdir()


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise CgroupUnavailable(f"cannot write {text!r} to {path}: {error.strerror}") from None


def _make(parent: Path, name: str, made: list[Path]) -> Path:
    folder = parent / name
    try:
        folder.mkdir()
    except OSError as error:
        raise CgroupUnavailable(
            f"cannot create cgroup {folder}: {error.strerror} (needs root, or a cgroup v2 "
            f"subtree delegated to this user)"
        ) from None
    made.append(folder)
    return folder


def _cpuset_ready(version: int, folder: Path, parent: Path, cpus: str | None) -> None:
    """A v1 cpuset takes no process until it has CPUs and memory nodes: copy or set them."""
    if version == 1:
        _write(folder / "cpuset.mems", (parent / "cpuset.mems").read_text().strip() or "0")
        _write(folder / "cpuset.cpus", cpus or (parent / "cpuset.effective_cpus").read_text())
    elif cpus is not None:
        _write(folder / "cpuset.cpus", cpus)


def _limit(
    child: ChildCgroup, files: Files, controller: str, tag: str, nested: bool, value
) -> None:
    version, own = _hierarchy(files, controller)
    outer = own / f"{_PREFIX}{tag}-{os.getpid()}"
    if outer not in child.made:  # cgroup v2 holds both controllers in one folder
        _sweep(own)
        _make(own, outer.name, child.made)
        if nested:
            _make(outer, "inner", child.made)
    leaf = outer / "inner" if nested else outer
    if nested and version == 2:
        _write(outer / "cgroup.subtree_control", f"+{controller}")
    if controller == "cpu":
        if version == 2:
            _write(outer / "cpu.max", f"{round(value * _PERIOD_US)} {_PERIOD_US}")
            child.limits["quota"] = outer / "cpu.max"
        else:
            _write(outer / "cpu.cfs_period_us", str(_PERIOD_US))
            _write(outer / "cpu.cfs_quota_us", str(round(value * _PERIOD_US)))
            child.limits["quota"] = outer / "cpu.cfs_quota_us"
    else:
        _cpuset_ready(version, outer, own, value)
        if nested:
            _cpuset_ready(version, leaf, outer, value)
        name = "cpuset.cpus.effective" if version == 2 else "cpuset.effective_cpus"
        child.limits["cpuset"] = leaf / name
    join = leaf / "cgroup.procs"
    if join not in child.joins:
        child.joins.append(join)
        child.home[join] = own / "cgroup.procs"


def _remove(child: ChildCgroup, timeout: float = 10.0) -> None:
    """Move what is left inside back home, then remove every folder made, deepest first."""
    for join, home in child.home.items():
        with contextlib.suppress(OSError):
            for pid in join.read_text().split():
                with contextlib.suppress(OSError):
                    home.write_text(pid)
    failed = []
    for folder in sorted(child.made, key=lambda p: -len(p.parts)):
        deadline = time.monotonic() + timeout
        while True:
            try:
                folder.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as error:
                # Processes that were just killed leave their cgroup a moment later.
                if time.monotonic() > deadline:
                    failed.append(f"{folder} ({error.strerror})")
                    break
                time.sleep(0.05)
    if failed:
        raise RuntimeError(f"could not remove the cgroup(s) {', '.join(failed)}")


@contextlib.contextmanager
def child_cgroup(
    *,
    quota: float | None = None,
    cpus: str | None = None,
    nested: bool = False,
    tag: str = "test",
) -> Iterator[ChildCgroup]:
    """Make a child cgroup of this process's with a CPU ``quota`` (in CPUs) and/or ``cpus``
    (a cpuset, e.g. ``"0"``); yield it; move out what is left and remove it on exit.

    With ``nested``, the limits go on a parent cgroup and processes join a child of it,
    ``inner``, that sets none (the case loky's ``cpu_count`` misses). Raises
    :class:`CgroupUnavailable` when no such cgroup can be made here.
    """
    if quota is None and cpus is None:
        raise ValueError("child_cgroup needs a quota, cpus or both")
    if quota is not None and not quota > 0:
        raise ValueError(f"quota must be a number of CPUs above 0; got {quota!r}")
    files = Files(Path("/"))
    child = ChildCgroup()
    try:
        if quota is not None:
            _limit(child, files, "cpu", tag, nested, quota)
        if cpus is not None:
            _limit(child, files, "cpuset", tag, nested, cpus)
        yield child
    finally:
        _remove(child)
