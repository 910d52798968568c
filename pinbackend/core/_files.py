"""Text files under a root folder, read leniently: what is missing or corrupt becomes a note."""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from .cpuset import CpuListError, parse_cpu_list, parse_cpu_mask

# sysfs files that hold hex masks; every other CPU-set file holds a list like "0-3,8".
_MASK_FILES = frozenset(
    {
        "cpumap",
        "shared_cpu_map",
        "thread_siblings",
        "core_siblings",
        "core_cpus",
        "package_cpus",
        "cluster_cpus",
        "die_cpus",
        "book_siblings",
        "drawer_siblings",
    }
)


class Files:
    """The text files under one root folder; what is missing or corrupt becomes a note."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.notes: list[str] = []
        self._corrupt_kinds: set[str] = set()

    def note(self, text: str) -> None:
        """Record what was guessed (once)."""
        if text not in self.notes:
            self.notes.append(text)

    def corrupt(self, rel: str, text: str) -> None:
        """Note a corrupt file once per kind (cpu0's stands for every CPU's), with its text."""
        kind = re.sub(r"\d+", "N", rel)
        if kind not in self._corrupt_kinds:
            self._corrupt_kinds.add(kind)
            self.note(f"corrupt {rel}: {text[:24]!r}")

    def text(self, rel: str) -> str | None:
        """The stripped text of ``rel``, None if it is missing or unreadable."""
        try:
            # Some snapshot tools pad files with NUL bytes after the kernel's text.
            return (self.root / rel).read_text().split("\0", 1)[0].strip()
        except UnicodeDecodeError:
            self.corrupt(rel, "not text")
        except OSError:
            pass
        return None

    def number(self, rel: str) -> int | None:
        """The integer in ``rel``, None if it is missing or corrupt."""
        text = self.text(rel)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            self.corrupt(rel, text)
            return None

    def cpus(self, *rels: str) -> frozenset[int] | None:
        """Return the CPU set in the first of ``rels`` that exists and parses, else None."""
        for rel in rels:
            text = self.text(rel)
            if text is None:
                continue
            is_mask = posixpath.basename(rel) in _MASK_FILES
            try:
                return parse_cpu_mask(text) if is_mask else parse_cpu_list(text)
            except CpuListError:
                self.corrupt(rel, text)
        return None

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` is a folder."""
        return (self.root / rel).is_dir()

    def numbered(self, rel: str, prefix: str) -> list[int]:
        """Return N for each folder ``prefixN`` in ``rel`` (``cpu12``, ``node1``, ``index3``)."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)")
        try:
            names = os.listdir(self.root / rel)
        except OSError:
            return []
        return sorted(int(m[1]) for m in map(pattern.fullmatch, names) if m)


def to_int(text: str | None) -> int | None:
    """The decimal integer in ``text``, None if there is none."""
    return int(text) if text is not None and text.strip().isdecimal() else None
