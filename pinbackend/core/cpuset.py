"""CPU sets as the kernel writes them: lists ("0-3,8") and hex masks ("00000000,0000000f").

Core sets are plain ``frozenset[int]`` of OS CPU numbers everywhere in pinbackend; this
module converts them to and from the kernel's two text forms and validates user input.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

__all__ = [
    "MAX_CPUS",
    "CpuListError",
    "format_cpu_list",
    "group_by",
    "parse_cpu_list",
    "parse_cpu_mask",
]

#: Upper bound on CPU numbers we accept (Linux's NR_CPUS tops out at 8192); a corrupt file
#: saying "0-4294967295" must give a clear error, not exhaust memory.
MAX_CPUS = 65536


class CpuListError(ValueError):
    """A CPU list or mask could not be parsed."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse a kernel CPU list such as ``"0-3,8,10-11"`` (an empty string is the empty set;
    an empty entry, as in ``"0,,1"`` or ``"0,"``, is an error).

    Also accepts the ``"0-15:2/4"`` stride form that ``cpulist_parse`` in the kernel allows.
    """
    cpus: set[int] = set()
    if not text.strip():
        return frozenset()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            # taskset refuses "0,,1" and "0," too (util-linux 2.38): an empty entry is a
            # typo (a CPU left out?), never silently skipped.
            raise CpuListError(
                f"invalid CPU list {text.strip()!r}: an empty entry between commas; expected "
                f"CPU numbers or ranges separated by single commas, e.g. '0-3,8'"
            )
        try:
            cpus.update(_parse_range(part))
        except ValueError:
            raise CpuListError(
                f"invalid CPU list {text.strip()!r}: {part!r} is not a CPU number or a range "
                f"like 0-3 of CPUs below {MAX_CPUS}; expected e.g. '0-3,8'"
            ) from None
    return frozenset(cpus)


def _parse_range(part: str) -> Iterable[int]:
    stride_used, stride_group = 1, 1
    if ":" in part:
        part, stride = part.split(":", 1)
        used, group = stride.split("/", 1)
        stride_used, stride_group = int(used), int(group)
        if not 0 < stride_used <= stride_group:
            raise ValueError(part)
    if "-" in part:
        low_text, high_text = part.split("-", 1)
        low, high = int(low_text), int(high_text)
    else:
        low = high = int(part)
    if low < 0 or high < low or high >= MAX_CPUS:
        raise ValueError(part)
    return (cpu for cpu in range(low, high + 1) if (cpu - low) % stride_group < stride_used)


def parse_cpu_mask(text: str) -> frozenset[int]:
    """Parse a kernel hex CPU mask such as ``"00000000,00001111"`` (most significant word first)."""
    digits = text.strip().replace(",", "")
    if digits.startswith(("0x", "0X")):
        digits = digits[2:]
    try:
        value = int(digits, 16) if digits else 0
    except ValueError:
        raise CpuListError(
            f"invalid CPU mask {text.strip()!r}: expected comma-separated hex words "
            f"like '00000000,0000000f'"
        ) from None
    if value.bit_length() > MAX_CPUS:
        raise CpuListError(f"invalid CPU mask: it names CPUs beyond {MAX_CPUS}")
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Format CPUs as the shortest kernel CPU list, e.g. ``{0, 1, 2, 3, 8}`` -> ``"0-3,8"``."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    start = previous = None
    for cpu in ordered:
        if previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            ranges.append(_format_range(start, previous))
        start = previous = cpu
    if start is not None:
        ranges.append(_format_range(start, previous))
    return ",".join(ranges)


def _format_range(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def group_by(cpus: Iterable[int], key: Callable[[int], Hashable | None]) -> dict | None:
    """Group CPUs by ``key`` (CPU -> hashable); None if the key is None for any CPU."""
    groups: dict = {}
    for cpu in sorted(cpus):
        value = key(cpu)
        if value is None:
            return None
        groups.setdefault(value, set()).add(cpu)
    return {value: frozenset(members) for value, members in groups.items()}
