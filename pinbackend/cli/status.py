"""``pinbackend status``: which processes hold which cores on this host."""

from __future__ import annotations

import argparse
import time

from ..core.cpuset import format_cpu_list
from ..host.leases import LeaseError, list_leases, registry_dir
from ._common import add_json_option, fail, print_json

HELP = "list the core leases held on this host"


def add_parser(subparsers) -> None:
    """Register the ``status`` subcommand."""
    parser = subparsers.add_parser("status", help=HELP, description=HELP + ".")
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the leases (top-level and nested) and the registry directory."""
    try:
        directory = registry_dir()
        leases = list_leases(scope=None)
    except LeaseError as error:
        fail(str(error))
    if args.json:
        print_json({"registry": str(directory), "leases": [info.to_dict() for info in leases]})
        return 0
    print(f"lease registry: {directory}")
    if not leases:
        print("no leases held")
        return 0
    print(f"{'pid':>8}  {'cores':<12} {'age':>8}  {'nested in':<12}  command")
    now = time.time()
    for info in leases:
        age = f"{now - info.since:.0f}s" if info.since else "?"
        cores = format_cpu_list(info.cores)
        if info.shared:
            cores += f" (shared {format_cpu_list(info.shared)})"
        print(
            f"{info.pid if info.pid is not None else '?':>8}  {cores:<12} {age:>8}  "
            f"{info.scope or '-':<12}  {info.command}"
        )
    return 0
