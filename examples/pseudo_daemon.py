"""Demo 2: a pseudo-daemon keeps one core to itself while batch work uses the rest.

``python -m pinbackend run --cores C -- COMMAND`` leases core C for as long as the command
runs and pins it there. A batch job started with the runner beside it plans its pools over
the cores nobody holds, so the two never meet. When the daemon dies (even by SIGKILL) the
kernel drops its lease, and the next job gets the core back.

Run: python examples/pseudo_daemon.py   (PINBACKEND_EXAMPLE_SMALL=1 for a quick run)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

SMALL = os.environ.get("PINBACKEND_EXAMPLE_SMALL") == "1"

# The "daemon": says where it runs, then keeps its core busy until killed.
DAEMON = (
    "import json, time; from pinbackend.diagnostics import process_report; "
    "print(json.dumps(process_report()), flush=True); "
    "[(sum(range(100_000)), time.sleep(0.001)) for _ in iter(int, 1)]"
)
DAEMON_COMMAND = [sys.executable, "-c", DAEMON]


def batch_task(reps: int) -> dict:
    """A little BLAS work, then where this worker ran."""
    import numpy as np

    from pinbackend.diagnostics import process_report

    a = np.random.default_rng(0).random((150, 150))
    for _ in range(reps):
        a @ a
    return process_report()


def batch_job() -> None:
    """An ordinary program: one pool as big as the machine allows; it reports, then holds its
    pool until told to finish (so that ``status`` can show it)."""
    from pinbackend.diagnostics import process_report

    with multiprocessing.Pool() as pool:
        reports = pool.map(batch_task, [20 if SMALL else 200] * 8)
        print(json.dumps({"main": process_report(), "workers": reports}), flush=True)
        sys.stdin.readline()


def start_batch() -> tuple[subprocess.Popen, list[dict]]:
    """Start the batch job under the runner; return it and its processes' reports."""
    batch = subprocess.Popen(
        [sys.executable, "-m", "pinbackend", "--pin-main", __file__, "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    data = json.loads(batch.stdout.readline())
    workers = sorted({r["pid"]: r for r in data["workers"]}.values(), key=lambda r: r["affinity"])
    return batch, [data["main"], *workers]


def finish(batch: subprocess.Popen) -> None:
    batch.communicate("done\n", timeout=60)


def show(processes: list[dict]) -> set[int]:
    """Print where every thread of each process ran; return all the CPUs used."""
    used = set()
    roles = ["main process"] + ["worker"] * (len(processes) - 1)
    for role, report in zip(roles, processes, strict=True):
        masks = sorted({tuple(cpus) for cpus in report["threads"].values()})
        used.update(cpu for mask in masks for cpu in mask)
        where = (
            f"every thread on CPUs {list(masks[0])}"
            if len(masks) == 1
            else "threads on CPUs " + ", ".join(str(list(m)) for m in masks)
        )
        print(f"  batch {role} {report['pid']}: {where}")
    return used


def main() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        print("This demo needs at least 2 CPUs; this process may use only", allowed)
        return
    daemon_cpu = allowed[-1]
    print(f"$ python -m pinbackend run --cores {daemon_cpu} -- python -c DAEMON &")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pinbackend",
            "run",
            "--cores",
            str(daemon_cpu),
            "--",
            *DAEMON_COMMAND,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        report = json.loads(daemon.stdout.readline())
        cpus = sorted({c for mask in report["threads"].values() for c in mask})
        print(f"  daemon pid {daemon.pid}: every thread on CPUs {cpus}")
        print("\n$ python -m pinbackend --pin-main batch.py   (started beside the daemon)")
        batch, processes = start_batch()
        used = show(processes)
        print(f"  the batch job used CPUs {sorted(used)}, never the daemon's CPU {daemon_cpu}")
        if daemon_cpu in used or daemon.poll() is not None:
            sys.exit("the demo went wrong: the daemon died or its core was used")
        status = subprocess.run(
            [sys.executable, "-m", "pinbackend", "status"], capture_output=True, text=True
        )
        print("\n$ python -m pinbackend status\n" + status.stdout.rstrip())
        finish(batch)
    finally:
        print(f"\n$ kill -KILL {daemon.pid}")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    time.sleep(0.1)
    print("$ python -m pinbackend --pin-main batch.py   (the core is free again)")
    batch, processes = start_batch()
    used = show(processes)
    finish(batch)
    if daemon_cpu not in used:
        sys.exit(f"the demo went wrong: CPU {daemon_cpu} stayed unused after the daemon died")
    print(f"  CPU {daemon_cpu} is in use by the batch job again")


if __name__ == "__main__":
    if "--batch" in sys.argv:
        batch_job()
    else:
        main()
