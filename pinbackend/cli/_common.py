"""Helpers shared by the subcommands: flags and argument types derived from the options'
declarations (:mod:`pinbackend.host.options`), JSON output, one-line errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import NoReturn

from ..core.cpuset import format_cpu_list
from ..host.options import COUNT, SECONDS, SOME_CPUS, Kind, Option, OptionsError, PinOptions


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def check_cores_allowed(cores: frozenset[int], allowed: frozenset[int]) -> None:
    """Raise :class:`UsageError` when ``--cores`` names CPUs this process may not use."""
    outside = cores - allowed
    if outside:
        raise UsageError(
            f"--cores {format_cpu_list(cores)}: CPUs {format_cpu_list(outside)} are not "
            f"allowed here; allowed CPUs: {format_cpu_list(allowed)}"
        )


def text_type(kind: Kind) -> Callable[[str], object]:
    """An argparse type for values of ``kind``: the options' own check, worded as they word
    it (``argument --claim-timeout: must be a finite number of seconds >= 0; got 'nan'``)."""

    def parse(text: str) -> object:
        try:
            return kind.check("", kind.parse(text))
        except OptionsError as error:
            raise argparse.ArgumentTypeError(error.as_typed(text)) from None

    return parse


#: argparse types for counts that must be at least 1, timeouts and non-empty CPU lists.
positive_int = text_type(COUNT)
seconds = text_type(SECONDS)
cpu_list = text_type(SOME_CPUS)


def declared_arguments(
    options: Iterable[Option], where: str, defaults: Mapping[str, object] | None = None
) -> list[tuple[tuple[str, ...], dict]]:
    """argparse's ``(flags, keywords)`` for each of the declared ``options`` that the front
    door ``where`` takes, then its old spellings there, hidden; ``defaults``: the front
    door's own, by option name. The value lands under the option's keyword name."""
    arguments = []
    for option in options:
        if where not in option.where:
            continue
        default = (defaults or {}).get(option.name, option.default)
        flags = (option.short, option.flag) if option.short else (option.flag,)
        arguments.append((flags, _keywords(option, default, _help(option, default))))
        for alias in option.aliases_at(where):
            hidden = {"help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
            if alias.value is not None:  # a flag without a value: stands for alias.value
                hidden |= {"action": "store_const", "const": alias.value, "dest": option.name}
                arguments.append(((alias.flag,), hidden))
            else:
                arguments.append(((alias.flag,), {**_keywords(option, default, ""), **hidden}))
    return arguments


def _keywords(option: Option, default: object, help: str) -> dict:
    kind = option.kind
    keywords = {"dest": option.name, "default": default, "help": help}
    if kind.switch:
        return {**keywords, "action": "store_true"}
    if kind.choices:  # argparse words a wrong choice itself: "invalid choice: 'x' (choose ...)"
        return {**keywords, "choices": kind.choices}
    return {**keywords, "type": text_type(kind), "metavar": kind.metavar}


def _help(option: Option, default: object) -> str:
    if default is None or option.kind.switch or option.kind.choices or not option.text(default):
        return option.help
    return f"{option.help} (default: {option.text(default)})"


def add_root_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--root DIR``: read the topology from a snapshot instead of this machine."""
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="read /sys and /proc under DIR (a topology snapshot) instead of this machine",
    )


def add_reserve_option(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--reserve LIST``, as declared (:class:`~pinbackend.host.options.PinOptions`):
    CPUs the planner must never pick."""
    option = PinOptions.option("reserve")
    parser.add_argument(
        option.flag,
        type=text_type(option.kind),
        default=option.default,
        metavar=option.kind.metavar,
        help=help,
    )


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
