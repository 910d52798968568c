"""Quick start: see the machine, plan disjoint core sets, and run pinned workers.

Run: python examples/quickstart.py   (PINBACKEND_EXAMPLE_SMALL=1 for the CI smoke size)
"""

from __future__ import annotations

import subprocess
import sys

from pinbackend.cli.render import describe_plan, describe_topology
from pinbackend.core.planner import plan_slots
from pinbackend.core.sysfs import read_topology

REPORT = (
    "import json, numpy; from pinbackend.diagnostics import process_report; "
    "r = process_report(); "
    "print(f\"pid {r['pid']}: CPUs {r['affinity']}, \"  "
    "f\"BLAS threads {[p['num_threads'] for p in r['thread_pools']]}\")"
)


def main() -> None:
    topology = read_topology()
    print(describe_topology(topology))
    n_workers = min(2, len(topology.restrict(topology.allowed).cores))
    plan = plan_slots(topology, n_workers)
    print(f"\nplan for {n_workers} workers:")
    print(describe_plan(topology.restrict(topology.allowed), plan.slots))
    print("\nworkers started with `python -m pinbackend run -n 1`, side by side:")
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pinbackend",
                "run",
                "-n",
                "1",
                "--wait",
                "10",
                "--",
                sys.executable,
                "-c",
                REPORT + "; import time; time.sleep(1)",
            ]
        )
        for _ in range(n_workers)
    ]
    for worker in workers:
        worker.wait()


if __name__ == "__main__":
    main()
