"""Helpers shared by the subcommands: argument types, JSON output, one-line errors."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from ..core.cpuset import CpuListError, format_cpu_list, parse_cpu_list
from ..host.options import OptionsError, check_seconds


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def cpu_list(text: str) -> frozenset[int]:
    """argparse type for CPU lists such as ``0-3,8``."""
    try:
        cpus = parse_cpu_list(text)
    except CpuListError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not cpus:
        raise argparse.ArgumentTypeError(f"empty CPU list {text!r}; expected e.g. '0-3,8'")
    return cpus


def check_cores_allowed(cores: frozenset[int], allowed: frozenset[int]) -> None:
    """Raise :class:`UsageError` when ``--cores`` names CPUs this process may not use."""
    outside = cores - allowed
    if outside:
        raise UsageError(
            f"--cores {format_cpu_list(cores)}: CPUs {format_cpu_list(outside)} are not "
            f"allowed here; allowed CPUs: {format_cpu_list(allowed)}"
        )


def seconds(text: str) -> float:
    """argparse type for timeouts: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    try:
        return check_seconds("the timeout", value)
    except OptionsError:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds >= 0; got {text!r}"
        ) from None


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def add_root_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--root DIR``: read the topology from a snapshot instead of this machine."""
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="read /sys and /proc under DIR (a topology snapshot) instead of this machine",
    )


def add_reserve_option(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--reserve LIST``: CPUs the planner must never pick."""
    parser.add_argument("--reserve", type=cpu_list, default=frozenset(), metavar="LIST", help=help)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``: machine-readable output on stdout."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a picture")


def print_json(data: object) -> None:
    """Print ``data`` as indented JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def fail(message: str, status: int = 2) -> NoReturn:
    """Print ``pinbackend: error: message`` on stderr and exit."""
    print(f"pinbackend: error: {message}", file=sys.stderr)
    raise SystemExit(status)
