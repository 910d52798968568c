"""Plan disjoint core sets ("slots") for parallel workers on one host. Pure functions only.

A slot is a frozenset of OS CPU numbers. The planner hands out whole physical cores (SMT
siblings stay together), balances slot sizes to within one core, keeps a slot inside one
L3 group / NUMA node / package / CPU kind where the sizes allow, and spreads slots evenly
over packages and NUMA nodes. It never oversubscribes silently: more workers than cores is
an error unless the caller opts into sharing (which warns) or into clamping the number of
workers to what fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .cpuset import format_cpu_list
from .topology import Topology

__all__ = [
    "OVERSUBSCRIBE_POLICIES",
    "OversubscriptionWarning",
    "Plan",
    "PlanError",
    "ordered_cores",
    "plan_slots",
]

#: What to do when more workers are asked than there are cores: ``"error"`` (the default)
#: raises :class:`PlanError`; ``"clamp"`` plans only as many workers as fit; ``"share"`` lets
#: several workers share one slot and warns.
OVERSUBSCRIBE_POLICIES = ("error", "clamp", "share")

# Cost of a slot crossing a boundary, per level: crossing a package is worst (remote memory,
# no shared cache), then a NUMA node, a CPU kind (P/E mix runs at the slowest core's pace),
# then an L3 group.
_LEVEL_WEIGHTS = {"package": 1000, "numa": 100, "kind": 100, "l3": 10}


class PlanError(ValueError):
    """The requested plan is impossible or the arguments are invalid."""


class OversubscriptionWarning(UserWarning):
    """Several workers were told to share cores (``oversubscribe="share"``)."""


@dataclass(frozen=True)
class Plan:
    """The slots planned for workers, in worker order, and how they were obtained.

    ``requested`` is the number of workers asked for (None: as many as fit); ``shared`` says
    that several workers share one slot. The planner never warns: callers report these facts
    (:meth:`sharing_note`) where the user can see them.
    """

    slots: tuple[frozenset[int], ...]
    usable: frozenset[int]
    shared: bool = False
    requested: int | None = None

    @property
    def n_workers(self) -> int:
        """Number of workers (slots, counting shared ones once per worker)."""
        return len(self.slots)

    @property
    def n_distinct(self) -> int:
        """Number of distinct core sets."""
        return len(set(self.slots))

    def sharing_note(self) -> str | None:
        """What to tell the user when workers share core sets; None when they do not."""
        if not self.shared:
            return None
        return (
            f"{self.n_workers} workers asked for but only {self.n_distinct} disjoint core "
            f"sets fit on CPUs {format_cpu_list(self.usable)}; workers share core sets "
            f"(oversubscribe='share'), expect slowdowns"
        )

    def to_dict(self) -> dict:
        """Plain-data form used by ``plan --json``."""
        return {
            "workers": [sorted(slot) for slot in self.slots],
            "usable": sorted(self.usable),
            "shared": self.shared,
        }


def plan_slots(
    topology: Topology,
    n_workers: int | None = None,
    *,
    cores_per_worker: int | None = None,
    reserve: Iterable[int] = (),
    busy: Iterable[int] = (),
    oversubscribe: str = "error",
) -> Plan:
    """Plan one disjoint core set per worker on ``topology``'s allowed CPUs.

    ``n_workers`` workers share all usable cores (sizes differ by at most one core) unless
    ``cores_per_worker`` fixes the size; with only ``cores_per_worker``, as many workers as
    fit. With neither, one worker per core. ``reserve`` CPUs (must be online CPUs) are never
    used; ``busy`` CPUs (held by other leases) are skipped silently. ``oversubscribe`` is one
    of :data:`OVERSUBSCRIBE_POLICIES`; with ``"share"`` the plan says so (``Plan.shared``)
    and the caller warns.
    """
    _check_positive("n_workers", n_workers)
    _check_positive("cores_per_worker", cores_per_worker)
    if oversubscribe not in OVERSUBSCRIBE_POLICIES:
        raise PlanError(
            f"oversubscribe must be one of {', '.join(OVERSUBSCRIBE_POLICIES)}; "
            f"got {oversubscribe!r}"
        )
    reserve = frozenset(reserve)
    unknown = reserve - topology.online
    if unknown:
        raise PlanError(
            f"reserve names CPUs {format_cpu_list(unknown)} that this machine does not have "
            f"online (online CPUs: {format_cpu_list(topology.online)}); "
            f"pick reserved CPUs among them"
        )
    usable = topology.allowed - reserve - frozenset(busy)
    if not usable:
        raise PlanError(
            f"no usable CPU: allowed {format_cpu_list(topology.allowed)}, reserved "
            f"{format_cpu_list(reserve) or 'none'}, held by other leases "
            f"{format_cpu_list(frozenset(busy) & topology.allowed) or 'none'}; "
            f"reserve fewer CPUs or wait for other leases to end"
        )
    view = topology.restrict(usable)
    units = ordered_cores(view)
    sizes, shared_by = _slot_sizes(len(units), n_workers, cores_per_worker, oversubscribe)
    if sum(sizes) == len(units):
        slots = _place_contiguous(units, _boundary_costs(view, units), sizes)
    else:
        slots = _place_spread(_build_tree(view, units), sizes[0], len(sizes))
    if shared_by > 1:
        slots = [slots[i % len(slots)] for i in range(n_workers)]
    return Plan(slots=tuple(slots), usable=usable, shared=shared_by > 1, requested=n_workers)


def _check_positive(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{name} must be a positive integer or None; got {value!r}")


def _slot_sizes(
    n_cores: int, n_workers: int | None, cores_per_worker: int | None, oversubscribe: str
) -> tuple[list[int], int]:
    """Return the slot sizes (in cores) and how many workers share each slot (1 = none)."""
    if cores_per_worker is not None and cores_per_worker > n_cores:
        raise PlanError(
            f"cores_per_worker={cores_per_worker} but only {n_cores} usable cores; "
            f"ask for at most {n_cores} cores per worker"
        )
    if cores_per_worker is None:
        n = n_cores if n_workers is None else n_workers
        if n <= n_cores:
            small, extra = divmod(n_cores, n)
            # The larger slots come first: deterministic, and the placement picks positions.
            return [small + 1] * extra + [small] * (n - extra), 1
        fitting = n_cores
        size = 1
    else:
        fitting = n_cores // cores_per_worker
        size = cores_per_worker
        n = fitting if n_workers is None else n_workers
        if n <= fitting:
            return [size] * n, 1
    if oversubscribe == "error":
        raise PlanError(
            f"{n} workers of {_count(size, 'core')} need {_count(n * size, 'core')} but only "
            f"{n_cores} {'is' if n_cores == 1 else 'are'} usable; use at most "
            f"{_count(fitting, 'worker')}, fewer cores per worker, or "
            f"oversubscribe='share' (--oversubscribe share on the command line) to let "
            f"workers share cores"
        )
    if oversubscribe == "clamp":
        return [size] * fitting, 1
    return [size] * fitting, -(-n // fitting)


def _count(number: int, noun: str) -> str:
    """``1 core``, ``2 cores``: messages name counts in good grammar."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def ordered_cores(view: Topology) -> list[frozenset[int]]:
    """Physical cores in locality order: package, CPU kind, NUMA node, L3 group, CPU number."""
    keys = _group_keys(view)

    def key(core: frozenset[int]) -> tuple:
        cpu = min(core)
        return (*(level.get(cpu, -1) for level in keys.values()), cpu)

    return sorted(view.cores, key=key)


def _group_keys(view: Topology) -> dict[str, dict[int, int]]:
    """For each locality level, map CPU -> index of its group at that level."""
    # Kinds are ranked most performant first, so P-cores get the lowest CPU positions.
    levels = {
        "package": list(view.packages.values()),
        "kind": list(reversed(view.cpu_kinds)),
        "numa": list(view.numa_nodes.values()),
        "l3": list(view.l3_groups),
    }
    return {
        name: {cpu: index for index, group in enumerate(groups) for cpu in group}
        for name, groups in levels.items()
    }


def _boundary_costs(view: Topology, units: Sequence[frozenset[int]]) -> list[int]:
    """Cost of cutting between unit i-1 and unit i, for each i (index 0 is unused)."""
    keys = _group_keys(view)
    costs = [0] * len(units)
    for i in range(1, len(units)):
        before, after = min(units[i - 1]), min(units[i])
        costs[i] = sum(
            _LEVEL_WEIGHTS[name]
            for name, level in keys.items()
            if level.get(before, -1) != level.get(after, -1)
        )
    return costs


def _place_contiguous(
    units: Sequence[frozenset[int]], costs: Sequence[int], sizes: Sequence[int]
) -> list[frozenset[int]]:
    """Cut the locality-ordered cores into contiguous slots, crossing as few boundaries as possible.

    Every usable core is used. Slot sizes are ``big`` or ``small`` cores; dynamic programming
    chooses where the big ones go so that slots straddle the cheapest boundaries.
    """
    big, small = max(sizes), min(sizes)
    n, n_big = len(sizes), sizes.count(big) if big != small else 0
    prefix = [0]
    for cost in costs[1:]:
        prefix.append(prefix[-1] + cost)

    def inner_cost(start: int, length: int) -> int:
        # Boundaries strictly inside [start, start + length).
        return prefix[start + length - 1] - prefix[start]

    infinity = float("inf")
    # best[i][j]: least cost of i slots of which j are big.
    best = [[infinity] * (n_big + 1) for _ in range(n + 1)]
    choice: dict[tuple[int, int], int] = {}
    best[0][0] = 0
    for i in range(n):
        for j in range(min(i, n_big) + 1):
            if best[i][j] == infinity:
                continue
            start = i * small + j * (big - small)
            for is_big in (True, False) if n_big else (False,):
                j_next = j + is_big
                if j_next > n_big or (i + 1) - j_next > n - n_big:
                    continue
                total = best[i][j] + inner_cost(start, big if is_big else small)
                if total < best[i + 1][j_next]:
                    best[i + 1][j_next] = total
                    choice[(i + 1, j_next)] = is_big
    lengths: list[int] = []
    j = n_big
    for i in range(n, 0, -1):
        is_big = choice[(i, j)]
        lengths.append(big if is_big else small)
        j -= is_big
    lengths.reverse()
    slots, start = [], 0
    for length in lengths:
        slots.append(frozenset().union(*units[start : start + length]))
        start += length
    return slots


@dataclass
class _Domain:
    units: list[frozenset[int]]
    children: list[_Domain]


def _build_tree(view: Topology, units: Sequence[frozenset[int]]) -> _Domain:
    """Nest the ordered cores by package > kind > NUMA node > L3 group (empty levels skipped)."""
    keys = list(_group_keys(view).values())

    def build(members: list[frozenset[int]], depth: int) -> _Domain:
        if depth == len(keys):
            return _Domain(members, [])
        groups: dict[int, list[frozenset[int]]] = {}
        for unit in members:
            groups.setdefault(keys[depth].get(min(unit), -1), []).append(unit)
        if len(groups) == 1:
            return build(members, depth + 1)
        return _Domain(members, [build(g, depth + 1) for g in groups.values()])

    return build(list(units), 0)


def _place_spread(root: _Domain, size: int, count: int) -> list[frozenset[int]]:
    """Place ``count`` slots of ``size`` cores each, spread evenly over the domain tree.

    Used when the slots do not fill the machine: each domain takes whole slots in turn
    (the one with the most free cores first), so slots land on different packages and NUMA
    nodes before doubling up, and a slot never straddles domains unless none can hold it.
    """
    slots: list[frozenset[int]] = []
    _fill(root, size, count, slots)
    return slots


def _capacity(domain: _Domain, size: int) -> int:
    """How many slots of ``size`` cores fit in ``domain`` without straddling its sub-domains."""
    if not domain.children:
        return len(domain.units) // size
    return sum(_capacity(child, size) for child in domain.children)


def _fill(domain: _Domain, size: int, count: int, slots: list[frozenset[int]]) -> list:
    """Append ``count`` slots taken from ``domain`` to ``slots``; return its unused cores."""
    if not domain.children:
        for i in range(count):
            slots.append(frozenset().union(*domain.units[i * size : (i + 1) * size]))
        return list(domain.units[count * size :])
    free = [len(child.units) for child in domain.children]
    taken = [0] * len(domain.children)
    # First whole slots that straddle nothing inside a child, then slots that straddle
    # only inside one child; what is left straddles children (taken from their leftovers).
    for capacity in (
        [_capacity(child, size) for child in domain.children],
        [len(child.units) // size for child in domain.children],
    ):
        while sum(taken) < count:
            candidates = [i for i, cap in enumerate(capacity) if taken[i] < cap]
            if not candidates:
                break
            chosen = max(candidates, key=lambda i: (free[i] - taken[i] * size, -i))
            taken[chosen] += 1
    leftovers: list[frozenset[int]] = []
    for child, n_child in zip(domain.children, taken, strict=True):
        leftovers.extend(_fill(child, size, n_child, slots))
    straddlers = count - sum(taken)
    for i in range(straddlers):
        slots.append(frozenset().union(*leftovers[i * size : (i + 1) * size]))
    return leftovers[straddlers * size :]
