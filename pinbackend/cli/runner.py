"""The runner form of the command line: ``python -m pinbackend [options] SCRIPT [ARGS...]``.

Which form a command line is decides :func:`route`, on the first argument that is not a
runner option: ``-m MODULE`` or any word that is not a subcommand name runs a program; a
subcommand name (``info``, ``plan``, ``run``, ``status``, ``bench``) selects the subcommand,
and must come first. A script whose name is a subcommand's runs as ``./NAME`` or after
``--``. As with ``python``, options for the runner come before the program, everything
after it belongs to the program.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__
from ..core.cpuset import format_cpu_list
from ..core.planner import PlanError
from ..core.topology import TopologyError
from ..host.machine import read_topology
from ..host.registry import LeaseError
from ..host.view import HostView
from ..runner import (
    RunnerConfig,
    Target,
    TargetError,
    check_target,
    run_target,
    start_job,
)
from ..runner._plan import decide, host_view, survey
from ._common import (
    OneLineErrorParser,
    UsageError,
    check_cores_allowed,
    declared_arguments,
    fail,
)
from .render import describe_plan

__all__ = ["RunnerCall", "help_text", "main", "route", "usage"]


def usage(subcommands) -> str:
    """The usage lines of both forms, naming the registered subcommands."""
    return (
        "python -m pinbackend [options] SCRIPT [ARGS...]\n"
        "       python -m pinbackend [options] -m MODULE [ARGS...]\n"
        f"       python -m pinbackend COMMAND [...]   (COMMAND: {', '.join(subcommands)})"
    )


#: Words that select a subcommand when they come first (``bench`` is kept for a future one).
RESERVED_NAMES = frozenset({"bench"})
_TOP_LEVEL_ONLY = frozenset({"-h", "--help", "--version"})


@dataclass(frozen=True)
class _Option:
    flags: tuple[str, ...]
    kwargs: dict

    @property
    def takes_value(self) -> bool:
        """Whether the option consumes the next argument (when not given inline)."""
        return self.kwargs.get("action") not in ("store_true", "store_const", "help", "version")


_DECLARED = RunnerConfig.declared("runner")

# One table drives both the parser and the scanner that finds where the program starts.
_OPTIONS = (
    # Listed once, by the top-level help; accepted among the runner's options too.
    _Option(("-h", "--help"), {"action": "store_true", "help": argparse.SUPPRESS}),
    _Option(("--version",), {"action": "store_true", "help": argparse.SUPPRESS}),
    # The options the runner takes, as RunnerConfig declares them.
    *(_Option(flags, kwargs) for flags, kwargs in declared_arguments(_DECLARED, "runner")),
    _Option(("--dry-run",), {"action": "store_true", "help": "print the plan; run nothing"}),
    _Option(("--json",), {"action": "store_true", "help": "with --dry-run: print JSON"}),
    _Option(
        ("--root",),
        {
            "default": "/",
            "metavar": "DIR",
            "help": "with --dry-run: plan for a topology snapshot under DIR",
        },
    ),
)
_BY_FLAG = {flag: option for option in _OPTIONS for flag in option.flags}


def _parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m pinbackend",
        usage=argparse.SUPPRESS,
        add_help=False,
        allow_abbrev=False,
        description="The runner (python -m pinbackend [options] SCRIPT | -m MODULE) runs a "
        "program as python would, with pinned pools: every process-pool worker "
        "(multiprocessing, concurrent.futures, joblib) gets cores of its own, thread pools "
        "fit the cores, and other jobs' cores are left alone. Options go before the "
        "program. A script named like a subcommand runs as ./NAME or after --.",
    )
    group = parser.add_argument_group("runner options")
    for option in _OPTIONS:
        group.add_argument(*option.flags, **option.kwargs)
    group.add_argument(
        "-m",
        dest="module_help",
        metavar="MODULE",
        help="run library module MODULE as a script (as python -m); ends the options",
    )
    return parser


def help_text() -> str:
    """The runner's options, for the top-level ``--help``."""
    return _parser().format_help()


@dataclass(frozen=True)
class RunnerCall:
    """A command line for the runner: its options, and the program with its arguments."""

    options: tuple[str, ...]
    target: Target | None


def _scan(argv: list[str]) -> tuple[list[str], Target | None, bool]:
    """Split argv into runner options and the program; also say if ``--`` forced a script."""
    options: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            rest = argv[i + 1 :]
            return options, (Target(rest[0], tuple(rest[1:])) if rest else None), True
        if token == "-m" or (token.startswith("-m") and not token.startswith("--")):
            name = token[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not name:
                raise UsageError("-m needs a module name: python -m pinbackend -m MODULE")
            rest = argv[i + 1 :] if token[2:] else argv[i + 2 :]
            return options, Target(name, tuple(rest), module=True), False
        if token.startswith("-") and token != "-":
            options.append(token)
            flag = token.split("=", 1)[0] if token.startswith("--") else token[:2]
            inline = "=" in token if token.startswith("--") else len(token) > 2
            option = _BY_FLAG.get(flag)
            if option is not None and option.takes_value and not inline and i + 1 < len(argv):
                options.append(argv[i + 1])
                i += 1
            i += 1
            continue
        return options, Target(token, tuple(argv[i + 1 :])), False
    return options, None, False


def route(argv: list[str], subcommands) -> RunnerCall | None:
    """Return the runner call in ``argv``, or None when argv belongs to the subcommand parser.

    Raises :class:`UsageError` for runner options without a program and for runner options
    put before a subcommand.
    """
    options, target, forced = _scan(list(argv))
    top_level = all(token in _TOP_LEVEL_ONLY for token in options)
    names = set(subcommands) | RESERVED_NAMES
    if target is None:
        if top_level:
            return None  # no arguments, --help or --version
        raise UsageError(
            "missing the program to run: python -m pinbackend [options] SCRIPT [ARGS...] "
            "or [options] -m MODULE [ARGS...]"
        )
    if not target.module and target.name == "-":
        raise UsageError(
            "reading the program from stdin ('-') is not supported; save it to a file and "
            "run python -m pinbackend [options] FILE"
        )
    if not target.module and not forced and target.name in names:
        if top_level:
            return None
        raise UsageError(
            f"runner options ({' '.join(options)}) cannot come before the subcommand "
            f"{target.name!r}; write python -m pinbackend {target.name} [...], or, to run a "
            f"script named {target.name!r}, ./{target.name} or -- {target.name}"
        )
    return RunnerCall(tuple(options), target)


def _config(args: argparse.Namespace) -> RunnerConfig:
    try:
        return RunnerConfig(**{option.name: getattr(args, option.name) for option in _DECLARED})
    except ValueError as error:
        raise UsageError(str(error)) from None


def _check_cpus(config: RunnerConfig, topology) -> None:
    if config.cores is not None:
        check_cores_allowed(config.cores, topology.allowed)
    if not config.reserve <= topology.online:
        raise UsageError(
            f"--reserve {format_cpu_list(config.reserve)}: CPUs "
            f"{format_cpu_list(config.reserve - topology.online)} are not online; "
            f"online CPUs: {format_cpu_list(topology.online)}"
        )


def _check_fits(config: RunnerConfig, topology) -> None:
    """Refuse options that no pool of the job could ever satisfy, before the program runs.

    Only the job's own CPUs count (allowed, within ``--cores``, minus ``--reserve``): cores
    that other jobs hold now are the policy's business (``--oversubscribe``).
    """
    usable = host_view(topology, config).usable
    if not usable:
        cpus = topology.allowed if config.cores is None else topology.allowed & config.cores
        raise UsageError(
            f"--reserve {format_cpu_list(config.reserve)} leaves the job no CPU: it reserves "
            f"every CPU the job may use ({format_cpu_list(cpus)}); reserve fewer CPUs"
        )
    need = config.cores_per_worker or 1
    have = topology.count_cores(usable)
    if have < need:
        limits = "".join(
            (
                f", within --cores {format_cpu_list(config.cores)}" if config.cores else "",
                f", minus --reserve {format_cpu_list(config.reserve)}" if config.reserve else "",
            )
        )
        raise UsageError(
            f"--cores-per-worker {need}: a worker needs {need} physical cores but the job "
            f"has only {have} (CPUs {format_cpu_list(usable)}: the allowed CPUs{limits}); "
            f"use --cores-per-worker {have} or less, or give the job more cores"
        )


def _dry_run(config: RunnerConfig, target: Target, args: argparse.Namespace) -> int:
    try:
        live = args.root == "/"
        view = survey(config) if live else host_view(read_topology(args.root), config)
    except (TopologyError, LeaseError) as error:
        fail(str(error))
    _check_cpus(config, view.topology)
    _check_fits(config, view.topology)
    try:
        decision = decide(view, config, None, "a pool")
        problem = None
    except PlanError as error:
        decision, problem = None, str(error)
    plan = decision.plan if decision is not None else None
    data = {
        "target": target.describe(),
        "args": list(target.args),
        "source": view.topology.source,
        "job_cpus": sorted(view.usable),
        "held_by_others": sorted(view.strangers & view.usable),
        "policy": config.oversubscribe,
        "workers": [sorted(slot) for slot in plan.slots] if plan else [],
        "shared": bool(plan and plan.shared) or bool(decision and decision.shared_with_others),
        "note": decision.note if decision else None,
        "waits": decision.waiting if decision else None,
        "error": problem,
        "main_threads": config.threads,
        "pin_main": config.pin_main,
    }
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    _print_dry_run(view, config, target, data, plan)
    return 0


def _print_dry_run(view: HostView, config: RunnerConfig, target: Target, data: dict, plan) -> None:
    topology = view.topology
    print(f"would run: python {target.describe()} {' '.join(target.args)}".rstrip())
    print(
        f"job CPUs: {format_cpu_list(view.usable)} of {topology.source} "
        f"(allowed {format_cpu_list(topology.allowed)}"
        + (f", reserved {format_cpu_list(config.reserve)}" if config.reserve else "")
        + (f", held by other jobs {format_cpu_list(view.strangers)}" if view.strangers else "")
        + ")"
    )
    print(
        "main process: "
        + ("pinned to the job's free CPUs" if config.pin_main else "not pinned")
        + (f", BLAS/OpenMP/TBB capped to {config.threads}" if config.threads else ", not capped")
    )
    size = f"-p {config.processes}" if config.processes else "one worker per free core"
    print(f"a process pool ({size}, policy {config.oversubscribe}) would get:")
    if data["error"]:
        print(f"  an error: {data['error']}")
        return
    if data["waits"]:
        print(f"  to wait: {data['waits']}")
        return
    if data["note"]:
        print(f"  note: {data['note']}")
    marks = {cpu: "r" for cpu in config.reserve & topology.allowed}
    marks.update({cpu: "x" for cpu in view.strangers})
    marks.update({cpu: "-" for cpu in topology.allowed - view.usable if cpu not in marks})
    picture = describe_plan(topology.restrict(topology.allowed), plan.slots, marks=marks)
    print("\n".join(f"  {line}".rstrip() for line in picture.splitlines()))


def main(call: RunnerCall, print_help: Callable[[], None]) -> int:
    """Parse the runner's options and run (or, with ``--dry-run``, show) the job.

    ``print_help`` prints the whole command line's help (``--help`` before a program).
    """
    args = _parser().parse_args(list(call.options))
    if args.help:
        print_help()
        return 0
    if args.version:
        print(f"pinbackend {__version__}")
        return 0
    target = call.target
    try:
        config = _config(args)
        if args.dry_run:
            check_target(target)
            return _dry_run(config, target, args)
        if args.json or args.root != "/":
            raise UsageError("--json and --root only go with --dry-run")
        topology = read_topology()
        _check_cpus(config, topology)
        _check_fits(config, topology)
        start_job(config, target)
    except TargetError as error:
        print(error, file=sys.stderr)
        return error.status
    except (UsageError, PlanError, LeaseError, TopologyError) as error:
        fail(str(error))
    # From here on errors are the program's own: they propagate as in plain python.
    run_target(target)
    return 0
