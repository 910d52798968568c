"""``pinbackend status``: which processes hold which cores on this host, and for which job.

A runner job (``python -m pinbackend script.py``) holds no lease itself; its pool workers
do. Each lease is shown with the job whose process started its holder.
"""

from __future__ import annotations

import argparse
import sys
import time

from .. import _platform
from ..core.cpuset import format_cpu_list
from ..host.foreign import pinned_holders
from ..host.holders import list_leases
from ..host.jobs import job_of, list_jobs
from ..host.machine import read_topology
from ..host.registry import LeaseError, RegistryError, UnsafeLeaseFile, registry_dir
from ._common import add_json_option, fail, print_json

HELP = "list the core leases held on this host"


def add_parser(subparsers) -> None:
    """Register the ``status`` subcommand."""
    parser = subparsers.add_parser("status", help=HELP, description=HELP + ".")
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the runner jobs, the leases (top-level and nested), the busy processes pinned
    without a lease here, and the registry directory."""
    problems: list[RegistryError] = []
    try:
        directory = registry_dir()
        leases = list_leases(scope=None, problems=problems)
        jobs = list_jobs()
    except LeaseError as error:
        fail(str(error))
    # Lock files no claim can trust: every plan refuses them, so say so first (stderr).
    for problem in problems:
        print(f"pinbackend: error: {problem}", file=sys.stderr)
    owners = {info.lease_id: job_of(info, jobs) for info in leases}
    pinned = pinned_holders(read_topology().allowed, leases=leases)
    if args.json:
        print_json(
            {
                "registry": str(directory),
                "jobs": [job.to_dict() for job in jobs],
                "leases": [
                    {**info.to_dict(), "job": owners[info.lease_id] and owners[info.lease_id].pid}
                    for info in leases
                ],
                "problems": [_problem_dict(problem) for problem in problems],
                "pinned": [info.to_dict() for info in pinned],
            }
        )
        return 0
    print(f"lease registry: {directory}")
    if problems:
        print("refused lock files (no plan uses this registry until they are removed):")
        for problem in problems:
            print(f"  {_printable(_problem_line(problem))}")
    now = time.time()
    if jobs:
        print("runner jobs:")
        print(f"{'pid':>8}  {'age':>8}  command")
        for job in jobs:
            print(f"{job.pid:>8}  {now - job.since:>7.0f}s  {_printable(job.command)}")
    _print_pinned(pinned, now)
    if not leases:
        print("no leases held")
        return 0
    print(f"{'pid':>8}  {'cores':<12} {'age':>8}  {'nested in':<12}  {'job':>8}  command")
    for info in leases:
        age = f"{now - info.since:.0f}s" if info.since else "?"
        cores = format_cpu_list(info.cores)
        if info.shared:
            cores += f" (shared {format_cpu_list(info.shared)})"
        job = owners[info.lease_id]
        print(
            f"{info.pid if info.pid is not None else '?':>8}  {cores:<12} {age:>8}  "
            f"{info.scope or '-':<12}  {job.pid if job else '-':>8}  {_printable(info.command)}"
        )
    return 0


def _print_pinned(pinned, now: float) -> None:
    """Busy processes pinned to part of these CPUs without a lease here: plans avoid them."""
    if not pinned:
        return
    print("busy processes pinned without a lease here (other users, taskset; plans avoid them):")
    print(f"{'pid':>8}  {'cores':<12} {'age':>8}  {'user':<12}  command")
    for info in pinned:
        age = f"{now - info.since:.0f}s" if info.since else "?"
        user = _platform.user_name(info.uid)
        cores = format_cpu_list(info.cores)
        print(f"{info.pid:>8}  {cores:<12} {age:>8}  {user:<12}  {_printable(info.command)}")


def _problem_dict(problem: RegistryError) -> dict:
    """``status --json``'s form of a refused lock file: its path, what is wrong, the message."""
    unsafe = isinstance(problem, UnsafeLeaseFile)
    return {
        "path": problem.path if unsafe else None,
        "problem": problem.problem if unsafe else None,
        "message": str(problem),
    }


def _problem_line(problem: RegistryError) -> str:
    if isinstance(problem, UnsafeLeaseFile):
        return f"{problem.path}: {problem.problem}"
    return str(problem)


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``).

    A command comes from a record any process of this user can write: printed raw, escape
    sequences could retitle or clear the terminal, and a newline could forge a table row.
    """
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
