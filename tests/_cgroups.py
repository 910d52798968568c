"""Child cgroups for tests: run a command inside a cgroup with a CPU quota or a cpuset.

A thin wrapper over :func:`pinbackend.bench.cgroups.child_cgroup` (which the benchmark uses
too) that skips the test, with the reason, where no cgroup can be made (not root, no
writable cgroup file system)::

    with child_cgroup(quota=1) as group:
        result = group.run(PYTHON, "-m", "pinbackend", "info", "--json")
        group.limits["quota"]  # the file that holds the limit

Every cgroup made is removed on exit, whatever happened inside (processes still in it are
moved out first).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest

from pinbackend.bench.cgroups import CgroupUnavailable, ChildCgroup
from pinbackend.bench.cgroups import child_cgroup as _child_cgroup

__all__ = ["Inside", "child_cgroup"]


class Inside:
    """A child cgroup made for a test: its limit files and a way to run commands in it."""

    def __init__(self, group: ChildCgroup):
        self.group = group
        self.limits = {kind: str(path) for kind, path in group.limits.items()}
        self.made = list(group.made)

    def prefix(self) -> list[str]:
        """Words to put before a command so that it runs inside the cgroup."""
        return self.group.prefix()

    def run(self, *command: str, env: dict | None = None, timeout: float = 60):
        """Run ``command`` inside the cgroup; return the CompletedProcess (text mode)."""
        return subprocess.run(
            [*self.prefix(), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def popen(self, *command: str, **kwargs) -> subprocess.Popen:
        """Start ``command`` inside the cgroup."""
        return subprocess.Popen([*self.prefix(), *command], **kwargs)


@contextlib.contextmanager
def child_cgroup(
    *, quota: float | None = None, cpus: str | None = None, nested: bool = False
) -> Iterator[Inside]:
    """A child cgroup of the test process's with ``quota`` CPUs and/or the cpuset ``cpus``.

    ``nested`` puts the limits on a parent and the commands in a child that sets none.
    Skips the test where cgroups cannot be made here.
    """
    with contextlib.ExitStack() as stack:
        try:
            group = stack.enter_context(_child_cgroup(quota=quota, cpus=cpus, nested=nested))
        except CgroupUnavailable as error:
            pytest.skip(f"cannot make a child cgroup here: {error}")
        yield Inside(group)
