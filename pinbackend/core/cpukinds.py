"""CPU kinds of a hybrid machine (performance and efficiency cores), read as hwloc does.

Linux offers several sources: ``cpu_capacity``, the Intel PMU a CPU belongs to, and the base
and maximum frequencies. hwloc ranks them in that order (``cpukinds.c``) and so does
:func:`cpu_kinds`: lower capacity, then a lower PMU type, then a lower frequency, means more
efficient. Part of :mod:`pinbackend.core.sysfs`'s readers; pure (files under a root only).
"""

from __future__ import annotations

from ._files import Files, to_int
from .cpuset import group_by

__all__ = ["cpu_kinds"]

_CPU = "sys/devices/system/cpu"
# Intel hybrid PMUs, most efficient first (hwloc ranks IntelLowPower < IntelAtom < IntelCore).
_PMU_KINDS = ("cpu_lowpower", "cpu_atom", "cpu_core")


def _frequencies(files: Files, online: frozenset[int]) -> dict[int, tuple[int, int]]:
    """(base, max) frequency in MHz per CPU, 0 where unknown, Turbo Boost Max 3.0 smoothed."""
    freqs = {}
    for cpu in online:
        folder = f"{_CPU}/cpu{cpu}/cpufreq"
        base = files.number(f"{folder}/base_frequency") or 0
        freqs[cpu] = [base, files.number(f"{folder}/cpuinfo_max_freq") or 0]
    # Turbo Boost Max 3.0 gives a few cores of one kind a higher max frequency. Like hwloc
    # (hwloc_linux_cpukinds_adjust_maxfreqs), when every max comes with a base frequency,
    # CPUs of one base frequency whose max differ by less than 10% get their lowest max.
    if all(base for base, top in freqs.values() if top):
        for base in {base for base, _ in freqs.values()}:
            same = [freq for freq in freqs.values() if freq[0] == base]
            low, high = min(f[1] for f in same), max(f[1] for f in same)
            if low and (high - low) * 10 < low:
                for freq in same:
                    freq[1] = low
    return {cpu: (base // 1000, top // 1000) for cpu, (base, top) in freqs.items()}


def _kinds_unreliable(cpuinfo: dict) -> bool:
    """True on AMD CPUs before Zen 5, whose per-core max frequencies vary but are one kind."""
    first = cpuinfo[min(cpuinfo)] if cpuinfo else {}
    family = to_int(first.get("cpu family"))
    # hwloc skips CPU kinds there too (topology-linux.c: "ignoring on pre-Zen5 AMD CPUs").
    return first.get("vendor_id") == "AuthenticAMD" and family is not None and family < 0x1A


def cpu_kinds(files: Files, online: frozenset[int], cpuinfo: dict) -> tuple[frozenset, ...]:
    """CPU kinds, most efficient first: by cpu_capacity, Intel PMU type, then frequency."""
    if _kinds_unreliable(cpuinfo):
        return ()
    pmu_rank = {}
    for rank, pmu in enumerate(_PMU_KINDS, start=1):
        for cpu in files.cpus(f"sys/devices/{pmu}/cpus") or ():
            pmu_rank[cpu] = rank
    freqs = _frequencies(files, online)
    # Lower capacity, then a lower PMU type, then a lower base (then max) frequency means
    # more efficient: hwloc's ranking order (cpukinds.c) for the sources Linux offers.
    keys = {
        cpu: (files.number(f"{_CPU}/cpu{cpu}/cpu_capacity") or 0, pmu_rank.get(cpu, 0), *freqs[cpu])
        for cpu in online
    }
    # A CPU that reports nothing is of no known kind (hwloc leaves it out of every kind).
    kinds = group_by((cpu for cpu, key in keys.items() if any(key)), keys.get) or {}
    return tuple(kinds[key] for key in sorted(kinds))
