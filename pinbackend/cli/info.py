"""``pinbackend info``: the machine, the allowed CPUs, the CPU budget and the thread pools."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .._docs import troubleshooting
from ..core.cpuset import format_cpu_list
from ..core.topology import TopologyError
from ..host.budget import read_budget
from ..host.leases import LeaseError, list_leases
from ..host.machine import read_topology
from ._common import add_json_option, add_root_option, fail, print_json
from .render import budget_cores, describe_budget, describe_topology

HELP = "show the topology, allowed CPUs, CPU budget and BLAS/OpenMP thread pools"
DEFAULT_IMPORTS = "numpy"


def add_parser(subparsers) -> None:
    """Register the ``info`` subcommand."""
    parser = subparsers.add_parser(
        "info",
        help=HELP,
        description=HELP + ". The CPU budget is the smallest of the affinity mask, the "
        "cgroup cpuset, the cgroup CPU quotas (own cgroup and ancestors), PYTHON_CPU_COUNT "
        "and PINBACKEND_CPU_COUNT; for --root, of the snapshot's files only. Thread pools "
        "are those threadpoolctl sees after importing the modules named by --import "
        "(libraries load native pools only when imported).",
    )
    add_root_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "--import",
        dest="modules",
        default=DEFAULT_IMPORTS,
        metavar="MODULES",
        help=f"comma-separated modules to import before listing thread pools "
        f"(default: {DEFAULT_IMPORTS}; missing ones are skipped; '' for none)",
    )
    parser.set_defaults(handler=run)


def thread_pools(modules: str) -> list[dict]:
    """Import the installed ``modules`` and return threadpoolctl's view of the loaded pools."""
    from threadpoolctl import threadpool_info

    for name in filter(None, (m.strip() for m in modules.split(","))):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    return threadpool_info()


def _leases() -> list:
    try:
        return list_leases(scope=None)
    except LeaseError as error:
        print(
            f"pinbackend: warning: cannot list leases: {error}. See "
            f"{troubleshooting('lease-directory-refused')}",
            file=sys.stderr,
        )
        return []


def run(args: argparse.Namespace) -> int:
    """Print the topology (and, on the live machine, thread pools)."""
    try:
        topology = read_topology(args.root)
    except TopologyError as error:
        fail(str(error))
    budget = read_budget(args.root, topology=topology)
    live = topology.source == "live"
    pools = thread_pools(args.modules) if live else []
    leases = _leases() if live else []
    if args.json:
        data = topology.to_dict()
        data["budget"] = {**budget.to_dict(), "cores": budget_cores(topology, budget)}
        data["thread_pools"] = pools
        data["leases"] = [info.to_dict() for info in leases]
        print_json(data)
        return 0
    print(describe_topology(topology))
    print(describe_budget(topology, budget))
    if live:
        print("core leases on this host:" if leases else "core leases: none")
        for info in leases:
            print(f"  pid {info.pid}: CPUs {format_cpu_list(info.cores)}  {info.command}")
        print("thread pools (threadpoolctl):" if pools else "thread pools: none loaded")
        for pool in pools:
            print(
                f"  {pool.get('internal_api', '?'):<10} {pool.get('num_threads', '?'):>3} threads"
                f"  {pool.get('version') or ''}  {pool.get('filepath', '')}"
            )
    return 0
