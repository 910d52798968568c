"""``pinbackend explain TOPIC``: print a troubleshooting entry, offline, like ``rustc --explain``.

Every warning and error of pinbackend names ``python -m pinbackend explain TOPIC``; the entry
comes from the installed package (:mod:`pinbackend._docs`), so it reads the same wherever
pinbackend is installed, whether or not the docs site is published.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import textwrap

from .._docs import DOCS_ROOT, EXPLAIN, Entry, entries, slug, troubleshooting_url
from ._common import add_json_option, fail, print_json

HELP = "print the troubleshooting entry that a warning or error names"

_MARKDOWN_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+\.)\s+")
_CODE_SPAN = re.compile(r"`[^`]+`")
_NO_BREAK = "\0"


def add_parser(subparsers) -> None:
    """Register the ``explain`` subcommand."""
    parser = subparsers.add_parser(
        "explain",
        help=HELP,
        description=HELP + ", from the installed package (no network needed). Without a "
        "TOPIC, list the topics.",
    )
    parser.add_argument(
        "topic", nargs="?", metavar="TOPIC", help="the topic a message names, e.g. pool-resized"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the topics with their titles (the default)"
    )
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print one entry, or the list of topics."""
    try:
        known = entries()
    except (OSError, ValueError) as error:
        fail(str(error), status=1)
    if args.topic is not None and args.list:
        fail(f"give a TOPIC or --list, not both; got {args.topic!r} and --list")
    if args.topic is None:
        return _list(known.values(), args.json)
    entry = known.get(topic_of(args.topic))
    if entry is None:
        fail(unknown_topic(args.topic, list(known)))
    if args.json:
        print_json(
            {
                "topic": entry.anchor,
                "title": entry.title,
                "markdown": entry.body,
                "url": troubleshooting_url(entry.anchor),
            }
        )
    else:
        print(render(entry, _width()))
    return 0


def topic_of(text: str) -> str:
    """The anchor a user means: a topic, a heading, or a pasted URL with ``#topic``.

    >>> topic_of("https://pinbackend.readthedocs.io/en/latest/troubleshooting/#pool-resized")
    'pool-resized'
    >>> topic_of("Pool resized")
    'pool-resized'
    """
    return slug(text.rsplit("#", 1)[-1])


def unknown_topic(text: str, topics: list[str]) -> str:
    """One line for a topic that is not on the page: the closest ones and how to list all."""
    wanted = topic_of(text)
    closest = [topic for topic in topics if wanted and wanted in topic]
    closest += difflib.get_close_matches(wanted, topics, n=3, cutoff=0.5)
    closest = list(dict.fromkeys(closest))[:4]
    hint = f"did you mean {', '.join(closest)}? " if closest else ""
    return f"no troubleshooting topic {text!r}; {hint}{EXPLAIN} --list lists them all"


def render(entry: Entry, width: int = 88) -> str:
    """An entry as text for a terminal: the title underlined, paragraphs wrapped, links spelled.

    A link to another entry becomes the ``explain`` command for it; a link to another docs
    page becomes its URL. Code blocks keep their lines, indented.
    """
    blocks, lines, code = [], [], False
    for line in [*_MARKDOWN_LINK.sub(_spell_link, entry.body).splitlines(), ""]:
        if line.startswith("```") or (not code and not line.strip()):
            if lines:
                blocks.append(_code(lines) if code else _paragraph(lines, width))
            lines, code = [], code != line.startswith("```")
        else:
            lines.append(line)
    heading = f"{entry.title}\n{'=' * len(entry.title)}"
    footer = f"(online, once published: {troubleshooting_url(entry.anchor)})"
    return "\n\n".join([heading, *blocks, footer])


def _paragraph(lines: list[str], width: int) -> str:
    """Rewrap a paragraph; each item of a list stays an item, its lines hanging under it."""
    items: list[list[str]] = []
    for line in lines:
        if _LIST_ITEM.match(line) or not items:
            items.append([line.strip()])
        else:
            items[-1].append(line.strip())
    filled = []
    for words in items:
        marker = _LIST_ITEM.match(words[0])
        text = " ".join(" ".join(words).split())
        # A code span (a command, a message) stays on one line, so that it can be copied.
        text = _CODE_SPAN.sub(lambda span: span[0].replace(" ", _NO_BREAK), text)
        filled.append(
            textwrap.fill(
                text,
                width=width,
                subsequent_indent=" " * (marker.end() if marker else 0),
                break_long_words=False,
                break_on_hyphens=False,
            ).replace(_NO_BREAK, " ")
        )
    return "\n".join(filled)


def _code(lines: list[str]) -> str:
    return "\n".join(f"    {line}" if line.strip() else "" for line in lines)


def _spell_link(match: re.Match) -> str:
    text, target = match.groups()
    page, _, anchor = target.partition("#")
    if page in ("", "troubleshooting.md"):
        return f"{text} (`{EXPLAIN} {anchor}`)"
    if page.endswith(".md") and "://" not in page:
        page = page.removesuffix(".md").removesuffix("index")
        return f"{text} ({DOCS_ROOT}/{page + '/' if page else ''}{'#' + anchor if anchor else ''})"
    return f"{text} ({target})"


def _list(known, as_json: bool) -> int:
    known = list(known)
    if as_json:
        print_json(
            [
                {"topic": e.anchor, "title": e.title, "url": troubleshooting_url(e.anchor)}
                for e in known
            ]
        )
        return 0
    print(f"Troubleshooting topics ({EXPLAIN} TOPIC prints one):")
    column = max(len(entry.anchor) for entry in known)
    for entry in known:
        print(f"  {entry.anchor:<{column}}  {entry.title}")
    return 0


def _width() -> int:
    return max(40, min(shutil.get_terminal_size((88, 24)).columns, 88))
