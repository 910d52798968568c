"""Command line: ``python -m pinbackend`` / ``pinbackend``.

Subcommands are diagnostics and tools (``info``, ``plan``, ``run``, ``status``, ``host``,
``bench``, ``explain``); each lives in its own module and registers itself here. Any other
first word is a program to run with pinned pools (the runner, :mod:`pinbackend.cli.runner`
decides which form a line is).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .. import __version__
from . import bench, explain, host, info, plan, run, runner, status
from ._common import OneLineErrorParser, UsageError, fail

SUBCOMMANDS = {
    "info": info,
    "plan": plan,
    "run": run,
    "status": status,
    "host": host,
    "bench": bench,
    "explain": explain,
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = OneLineErrorParser(
        prog="python -m pinbackend",
        usage=runner.usage(SUBCOMMANDS),
        description="Static multiprocessing: disjoint core sets per worker, capped thread "
        "pools, no oversubscription.",
        epilog=runner.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pinbackend {__version__}")
    subparsers = parser.add_subparsers(
        title="subcommands", metavar="COMMAND", prog="python -m pinbackend"
    )
    for module in SUBCOMMANDS.values():
        module.add_parser(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pinbackend: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        call = runner.route(argv, SUBCOMMANDS)
    except UsageError as error:
        fail(str(error))
    if call is not None:
        # The runner leaves warnings.showwarning alone: the program's warnings stay its own.
        return runner.main(call, print_help=lambda: build_parser().print_help())
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
    except BrokenPipeError:
        # `pinbackend info | head`: the reader left; exit quietly, as a shell tool does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
