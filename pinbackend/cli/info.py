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
from ..host.holders import list_leases
from ..host.hostreg import registry_in_use
from ..host.machine import read_topology
from ..host.registry import LeaseError
from ._common import UsageError, add_json_option, add_root_option, fail, print_json
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
        default=None,
        metavar="MODULES",
        help=f"comma-separated modules to import before listing thread pools (default: "
        f"{DEFAULT_IMPORTS}, skipped where it is not installed; '' for none); a module named "
        f"here that cannot be imported is an error",
    )
    parser.set_defaults(handler=run)


def thread_pools(modules: str | None) -> list[dict]:
    """Import ``modules`` and return threadpoolctl's view of the loaded pools.

    ``None`` means the default (:data:`DEFAULT_IMPORTS`), skipped where not installed; a
    module the user named that is missing or fails to import raises :class:`UsageError`:
    an empty list would say "no thread pools" for a typo.
    """
    from threadpoolctl import threadpool_info

    named = modules is not None
    names = (DEFAULT_IMPORTS if modules is None else modules).split(",")
    for name in filter(None, map(str.strip, names)):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a missing parent package, a name like '.x'
            found = False
        if not found:
            if named:
                raise UsageError(
                    f"--import {modules}: no module named {name!r} in this Python "
                    f"({sys.executable}); install it there, or leave it out of --import"
                )
            continue
        try:
            importlib.import_module(name)
        except Exception as error:
            raise UsageError(
                f"--import {modules}: importing {name!r} failed: "
                f"{type(error).__name__}: {error}; fix or leave out that module"
            ) from None
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


def _registry() -> dict:
    """Which registry this user's claims go through (``kind``: ``host`` or ``user``)."""
    try:
        return registry_in_use()
    except LeaseError as error:
        return {"kind": "user", "path": None, "private": None, "note": str(error)}


def _describe_registry(registry: dict) -> str:
    if registry["kind"] == "host":
        return (
            f"lease registry: host {registry['path']} (every user's jobs claim through it; "
            f"your own records: {registry['private']})"
        )
    return f"lease registry: per-user {registry['path']} ({registry['note']})"


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
    registry = _registry() if live else None
    if args.json:
        data = topology.to_dict()
        data["budget"] = {**budget.to_dict(), "cores": budget_cores(topology, budget)}
        data["thread_pools"] = pools
        data["leases"] = [info.to_dict() for info in leases]
        if registry is not None:
            data["registry"] = registry
        print_json(data)
        return 0
    print(describe_topology(topology))
    print(describe_budget(topology, budget))
    if live:
        print(_describe_registry(registry))
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
