"""``pinbackend plan``: show the core sets the planner would give N workers."""

from __future__ import annotations

import argparse

from ..core.planner import OVERSUBSCRIBE_POLICIES, PlanError, plan_slots
from ..core.topology import TopologyError
from ..host.lifecycle import report_plan
from ..host.machine import read_topology
from ._common import (
    add_json_option,
    add_reserve_option,
    add_root_option,
    fail,
    positive_int,
    print_json,
)
from .render import describe_plan

HELP = "show the disjoint core sets planned for N workers"


def add_parser(subparsers) -> None:
    """Register the ``plan`` subcommand."""
    parser = subparsers.add_parser("plan", help=HELP, description=HELP + ".")
    parser.add_argument(
        "-n",
        "--workers",
        type=positive_int,
        metavar="N",
        help="number of workers (default: one per core, or as many as --cores-per-worker allows)",
    )
    parser.add_argument(
        "--cores-per-worker", type=positive_int, metavar="K", help="physical cores per worker"
    )
    add_reserve_option(parser, "CPUs to keep free, e.g. 0 or 0-1,8")
    parser.add_argument(
        "--oversubscribe",
        choices=OVERSUBSCRIBE_POLICIES,
        default="error",
        help="more workers than cores: 'error' (default), 'clamp' to as many as fit, or "
        "'share' core sets with a warning",
    )
    add_root_option(parser)
    add_json_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Plan and print the slots."""
    try:
        topology = read_topology(args.root)
    except TopologyError as error:
        fail(str(error))
    try:
        plan = plan_slots(
            topology,
            args.workers,
            cores_per_worker=args.cores_per_worker,
            reserve=args.reserve,
            oversubscribe=args.oversubscribe,
        )
    except PlanError as error:
        fail(str(error))
    report_plan(plan)
    if args.json:
        print_json(plan.to_dict())
        return 0
    view = topology.restrict(topology.allowed)
    print(
        f"{plan.n_workers} worker{'s' * (plan.n_workers != 1)} on {len(plan.usable)} usable "
        f"CPUs of {topology.source}" + (" (workers share core sets)" if plan.shared else "")
    )
    print(describe_plan(view, plan.slots, marks={cpu: "r" for cpu in args.reserve}))
    return 0
