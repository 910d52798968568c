"""Command line: ``python -m pinbackend`` / ``pinbackend``.

Subcommands are diagnostics and tools (``info``, ``plan``, ``run``, ``status``, ``bench``);
each lives in its own module and registers itself here.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from . import bench, info, plan, run, status
from ._common import UsageError, fail

SUBCOMMANDS = {"info": info, "plan": plan, "run": run, "status": status, "bench": bench}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = _Parser(
        prog="python -m pinbackend",
        description="Static multiprocessing: disjoint core sets per worker, capped thread "
        "pools, no oversubscription.",
    )
    parser.add_argument("--version", action="version", version=f"pinbackend {__version__}")
    subparsers = parser.add_subparsers(title="subcommands", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        module.add_parser(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pinbackend: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    warnings.showwarning = _show_warning
    try:
        return args.handler(args)
    except UsageError as error:
        fail(str(error))
