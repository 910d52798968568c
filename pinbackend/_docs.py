"""The troubleshooting page: where every warning points, and its entries, readable offline.

Messages name ``python -m pinbackend explain TOPIC``, which prints the entry from the
installed package, with the published page's URL beside it. docs/troubleshooting.md is the
one source: MkDocs builds it, and the wheel carries a copy of it (``force-include`` in
pyproject.toml puts it at ``pinbackend/_data/troubleshooting.md``). An editable install or a
checkout has no copy; it reads the repository's docs/ instead.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DOCS_ROOT = "https://pinbackend.readthedocs.io/en/latest"

#: The command that prints a troubleshooting entry; every message names it.
EXPLAIN = "python -m pinbackend explain"

#: Where the wheel carries docs/troubleshooting.md, inside the package.
PACKAGED_PAGE = ("_data", "troubleshooting.md")

_REPO_PAGE = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"


def troubleshooting(anchor: str) -> str:
    """How to read one entry: the ``explain`` command, with the entry's URL beside it.

    ``anchor`` is the entry's heading slug, e.g. ``pool-resized``.
    """
    return f"{EXPLAIN} {anchor} ({troubleshooting_url(anchor)})"


def troubleshooting_url(anchor: str) -> str:
    """URL of one entry on the published troubleshooting page."""
    return f"{DOCS_ROOT}/troubleshooting/#{anchor}"


@dataclass(frozen=True)
class Entry:
    """One entry of the troubleshooting page: a ``## `` heading and the Markdown under it."""

    anchor: str
    title: str
    body: str


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's ``toc`` slugify, ``-`` separator).

    >>> slug("Pool stopped: a worker could not claim its cores")
    'pool-stopped-a-worker-could-not-claim-its-cores'
    """
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # toc slugs the rendered text, without markup
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def parse_entries(page: str) -> dict[str, Entry]:
    """The entries of a troubleshooting page's Markdown, by anchor, in page order."""
    entries: dict[str, Entry] = {}
    title, lines, fenced = None, [], False
    for line in [*page.splitlines(), "## "]:
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            if title is not None:
                anchor = slug(title)
                if anchor in entries:  # toc would make it anchor_1: the link would lie
                    raise ValueError(f"two troubleshooting entries are named #{anchor}")
                entries[anchor] = Entry(anchor, title, "\n".join(lines).strip("\n"))
            title, lines = line[3:].strip() or None, []
        elif title is not None:
            lines.append(line)
    return entries


def page_source() -> Traversable:
    """The troubleshooting page this installation reads: the wheel's copy, else the repo's.

    Raises :class:`FileNotFoundError` naming both places when neither exists.
    """
    from importlib.resources import files

    packaged = files(__package__)
    for part in PACKAGED_PAGE:
        packaged = packaged / part
    if packaged.is_file():
        return packaged
    # A checkout (editable install): the package sits beside docs/ and pyproject.toml.
    if _REPO_PAGE.is_file() and (_REPO_PAGE.parent.parent / "pyproject.toml").is_file():
        return _REPO_PAGE
    raise FileNotFoundError(
        f"the troubleshooting page is missing from this installation: neither "
        f"{packaged} nor {_REPO_PAGE} exists; reinstall pinbackend, or read "
        f"{DOCS_ROOT}/troubleshooting/"
    )


def entries() -> dict[str, Entry]:
    """The entries of the installed troubleshooting page, by anchor, in page order."""
    return parse_entries(page_source().read_text(encoding="utf-8"))
