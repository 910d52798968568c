"""Quick start: see the machine and plan disjoint core sets.

Run: python examples/quickstart.py   (PINBACKEND_EXAMPLE_SMALL=1 for the CI smoke size)
"""

from __future__ import annotations

from pinbackend.cli.render import describe_plan, describe_topology
from pinbackend.core.planner import plan_slots
from pinbackend.core.sysfs import read_topology


def main() -> None:
    topology = read_topology()
    print(describe_topology(topology))
    n_workers = min(2, len(topology.restrict(topology.allowed).cores))
    plan = plan_slots(topology, n_workers)
    print(f"\nplan for {n_workers} workers:")
    print(describe_plan(topology.restrict(topology.allowed), plan.slots))


if __name__ == "__main__":
    main()
