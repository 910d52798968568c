"""The CPU budget: how many CPUs a plan may use, and every limit that says so. Pure.

Several things bound the CPUs a process gets, each read by one small reader and combined in
one place, smallest wins (loky's ``cpu_count`` has the same shape):

- ``affinity``: the CPUs of its affinity mask (``sched_getaffinity``; for a snapshot,
  ``online``: its online CPUs);
- ``cpuset``: its cgroup cpuset (v1 ``cpuset.effective_cpus``/``cpuset.cpus``, v2
  ``cpuset.cpus.effective``); for a live process the affinity mask already lies inside it;
- ``quota``: a cgroup CPU quota on its cgroup or any ancestor (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), in CPUs' worth of time;
- ``variable``: ``PYTHON_CPU_COUNT`` (Python 3.13's override of ``os.cpu_count()``, honoured
  here on every Python) and ``PINBACKEND_CPU_COUNT``. They can only lower the budget.

The budget counts **CPUs** (logical CPUs, the unit of every limit above), rounded down to a
whole CPU, at least 1: a quota of 2.5 CPUs gives 2. The planner hands out whole physical
cores; :func:`cores_within` picks the cores whose CPUs fit in a budget (at least one core),
so on a machine without SMT a budget of N CPUs is N cores, and with two threads per core it
is N // 2 cores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ._files import Files
from .cgroup import cpu_quotas, cpuset
from .planner import ordered_cores
from .topology import Topology

__all__ = [
    "CPU_COUNT_VARIABLES",
    "LIMIT_KINDS",
    "Budget",
    "Limit",
    "cgroup_limits",
    "combine_limits",
    "cores_within",
    "read_budget",
    "variable_limits",
    "within_budget",
]

#: What can limit the budget (see the module docstring).
LIMIT_KINDS = ("affinity", "online", "cpuset", "quota", "variable")

#: The variables read, in the order they are reported.
CPU_COUNT_VARIABLES = ("PYTHON_CPU_COUNT", "PINBACKEND_CPU_COUNT")


@dataclass(frozen=True)
class Limit:
    """One limit on the CPUs a process may use: ``value`` CPUs, says ``source``.

    ``source`` is the file it was read from (its path on the machine) or the variable's name;
    ``value`` an integer count, or the quota in CPUs (``1.5``).
    """

    kind: str
    value: float
    source: str

    def __post_init__(self) -> None:
        if self.kind not in LIMIT_KINDS:
            raise ValueError(
                f"limit kind must be one of {', '.join(LIMIT_KINDS)}; got {self.kind!r}"
            )
        if not self.value > 0:
            raise ValueError(f"a {self.kind} limit must be above 0 CPUs; got {self.value!r}")

    @property
    def cpus(self) -> int:
        """Whole CPUs this limit allows: the value rounded down, at least 1."""
        return max(1, math.floor(self.value))

    def describe(self) -> str:
        """What this limit is, for messages: ``cgroup quota of 1.5 CPUs (/sys/...)``."""
        if self.kind == "variable":
            return f"{self.source}={self.value:g}"
        what = {
            "affinity": "affinity mask of",
            "online": "",
            "cpuset": "cgroup cpuset of",
            "quota": "cgroup quota of",
        }[self.kind]
        online = " online" if self.kind == "online" else ""
        return f"{what} {_cpus(self.value, online)} ({self.source})".lstrip()

    def to_dict(self) -> dict:
        """Plain-data form (``info --json``)."""
        return {"kind": self.kind, "value": self.value, "source": self.source}


def _cpus(value: float, adjective: str = "") -> str:
    return f"{value:g}{adjective} CPU" + ("" if value == 1 else "s")


@dataclass(frozen=True)
class Budget:
    """How many CPUs a plan may use (``cpus``, at least 1) and the limits it is the minimum of.

    ``notes`` say what was ignored (a variable that is not a positive integer, a cgroup
    mount this process cannot place itself in, a corrupt cgroup file); the caller decides
    whether to warn.
    """

    cpus: int
    limits: tuple[Limit, ...]
    notes: tuple[str, ...] = ()

    @property
    def binding(self) -> tuple[Limit, ...]:
        """The limits that set the budget (the smallest ones)."""
        return tuple(limit for limit in self.limits if limit.cpus == self.cpus)

    def reason(self) -> str:
        """Why the budget is what it is: ``1 CPU, set by PYTHON_CPU_COUNT=1``."""
        return f"{_cpus(self.cpus)}, set by {' and '.join(map(Limit.describe, self.binding))}"

    def to_dict(self) -> dict:
        """Plain-data form: ``{"cpus", "limits": [{"kind", "value", "source"}], "notes"}``."""
        return {
            "cpus": self.cpus,
            "limits": [limit.to_dict() for limit in self.limits],
            "notes": list(self.notes),
        }


def combine_limits(limits: Iterable[Limit], notes: Iterable[str] = ()) -> Budget:
    """The budget of ``limits``: the smallest wins. Needs at least one limit."""
    limits = tuple(limits)
    if not limits:
        raise ValueError(
            "a CPU budget needs at least one limit; give the affinity mask or the online CPUs"
        )
    return Budget(min(limit.cpus for limit in limits), limits, tuple(dict.fromkeys(notes)))


def variable_limits(environ: Mapping[str, str]) -> tuple[list[Limit], list[str]]:
    """The limits set by :data:`CPU_COUNT_VARIABLES` in ``environ``, and notes on bad values.

    Unset or empty means no limit, and so does ``PYTHON_CPU_COUNT=default`` (Python 3.13's
    meaning). Any other value must be a positive integer; one that is not is ignored with a
    note (Python 3.13 itself refuses to start with such a ``PYTHON_CPU_COUNT``).
    """
    limits, notes = [], []
    for name in CPU_COUNT_VARIABLES:
        text = environ.get(name, "").strip()
        if not text or (name == "PYTHON_CPU_COUNT" and text == "default"):
            continue
        if text.isdecimal() and int(text) > 0:
            limits.append(Limit("variable", int(text), name))
        else:
            notes.append(f"{name}={text[:24]!r} ignored: not a positive integer")
    return limits, notes


def cgroup_limits(files: Files, online: frozenset[int] | None = None) -> list[Limit]:
    """The cgroup cpuset and every CPU quota on the way up from this process's cgroup.

    The cpuset counts only ``online`` CPUs when given (a cpuset may name offline ones).
    Sources are paths on the machine (``/sys/fs/cgroup/...``), whatever root ``files`` reads.
    Missing or corrupt files give no limit (corrupt ones leave a note in ``files.notes``).
    """
    limits = []
    found = cpuset(files)
    if found is not None:
        cpus, rel = found
        if online is not None:
            cpus &= online
        if cpus:
            limits.append(Limit("cpuset", len(cpus), "/" + rel))
    limits.extend(Limit("quota", quota, "/" + rel) for quota, rel in cpu_quotas(files))
    return limits


def read_budget(
    files: Files,
    base: Limit,
    environ: Mapping[str, str] | None = None,
    *,
    online: frozenset[int] | None = None,
) -> Budget:
    """The budget from ``base`` (the affinity mask or the online CPUs, given by the caller),
    the cgroup files under ``files``' root (cpuset counted within ``online``) and, when
    given, the variables in ``environ``."""
    limits = [base, *cgroup_limits(files, online)]
    notes: list[str] = []
    if environ is not None:
        found, notes = variable_limits(environ)
        limits.extend(found)
    return combine_limits(limits, [*files.notes, *notes])


def within_budget(cores: Sequence[frozenset[int]], cpus: int) -> list[frozenset[int]]:
    """The longest prefix of ``cores`` (physical cores, in the order they are to be filled)
    whose CPUs number at most ``cpus``; at least the first core."""
    kept: list[frozenset[int]] = []
    total = 0
    for core in cores:
        total += len(core)
        if kept and total > cpus:
            break
        kept.append(core)
    return kept


def cores_within(topology: Topology, usable: Iterable[int], cpus: int) -> frozenset[int]:
    """The CPUs of the whole physical cores of ``usable`` that fit in a budget of ``cpus``.

    Cores are taken in locality order (package, CPU kind with performance cores first, NUMA
    node, L3 group, CPU number), so the kept ones are close together; at least one core is
    kept. ``usable`` must be online CPUs; an empty ``usable`` gives an empty set.
    """
    usable = frozenset(usable)
    if not usable:
        return usable
    return frozenset().union(*within_budget(ordered_cores(topology.restrict(usable)), cpus))
