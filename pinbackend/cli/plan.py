"""``pinbackend plan``: show the core sets the planner would give N workers.

Plans stay within the CPU budget (:mod:`pinbackend.host.budget`): the usable CPUs are cut
down to the whole physical cores that fit in it before planning.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..core.budget import Budget, cores_within
from ..core.cpuset import format_cpu_list
from ..core.planner import OVERSUBSCRIBE_POLICIES, PlanError, plan_slots
from ..core.topology import Topology, TopologyError
from ..host.budget import read_budget
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
    parser = subparsers.add_parser(
        "plan",
        help=HELP,
        description=HELP + ". Workers get only the physical cores that fit in the CPU budget "
        "(see `info`: affinity mask, cgroup cpuset and CPU quotas, PYTHON_CPU_COUNT, "
        "PINBACKEND_CPU_COUNT).",
    )
    parser.add_argument(
        "-n",
        "--workers",
        type=positive_int,
        metavar="N",
        help="number of workers (default: one per physical core of the CPU budget, or as many "
        "as --cores-per-worker allows)",
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


def within_budget(topology: Topology, budget: Budget, reserve: frozenset[int]) -> Topology:
    """``topology`` with its allowed CPUs cut down to the whole cores that fit in ``budget``
    (reserved CPUs left out first; they stay out of the plan anyway)."""
    usable = topology.allowed - reserve
    kept = cores_within(topology, usable, budget.cpus)
    if not kept or kept == usable:
        return topology
    return dataclasses.replace(topology, allowed=kept)


def run(args: argparse.Namespace) -> int:
    """Plan and print the slots."""
    try:
        topology = read_topology(args.root)
    except TopologyError as error:
        fail(str(error))
    budget = read_budget(args.root, topology=topology)
    planned = within_budget(topology, budget, args.reserve)
    try:
        plan = plan_slots(
            planned,
            args.workers,
            cores_per_worker=args.cores_per_worker,
            reserve=args.reserve,
            oversubscribe=args.oversubscribe,
        )
    except PlanError as error:
        if planned is not topology:
            fail(
                f"{error} (the CPU budget is {budget.reason()}: CPUs "
                f"{format_cpu_list(planned.allowed)}; see `python -m pinbackend info`)"
            )
        fail(str(error))
    report_plan(plan)
    if args.json:
        print_json({**plan.to_dict(), "budget": budget.to_dict()})
        return 0
    view = topology.restrict(topology.allowed)
    print(
        f"{plan.n_workers} worker{'s' * (plan.n_workers != 1)} on {len(plan.usable)} usable "
        f"CPUs of {topology.source}" + (" (workers share core sets)" if plan.shared else "")
    )
    if planned is not topology:
        print(f"CPU budget: {budget.reason()}")
    marks = {cpu: "r" for cpu in args.reserve}
    marks.update({cpu: "b" for cpu in planned.allowed ^ topology.allowed if cpu not in marks})
    print(describe_plan(view, plan.slots, marks=marks))
    return 0
