"""Pools whose workers cannot claim their slots: what the program sees. Run under the runner.

Usage: python claim_fails.py KIND METHOD CLAIM_TIMEOUT. KIND: pool (map, apply_async, imap,
then close/join), executor (map, then submit), mixed (one worker claims, one cannot).

A holder process leases CPUs for this program (``owner`` is this process, as for a worker
of an earlier pool that has not exited yet): the runner plans over them, and the workers
wait ``--claim-timeout`` seconds for them in vain. Prints one JSON line; a watchdog prints
``{"hung": ...}`` and exits 3 if the program does not finish in time.
"""

import concurrent.futures
import json
import multiprocessing
import multiprocessing.process
import os
import subprocess
import sys
import threading
import time

DEADLINE = 60
HOLD = """
import sys
from pinbackend.host.leases import claim
cpus = set(map(int, sys.argv[1].split(",")))
lease = claim(cpus, command="an earlier worker of this program", owner=int(sys.argv[2]))
print("held", flush=True)
sys.stdin.read()
"""

# Every process this program starts goes through BaseProcess.start: count them.
started = []
_start = multiprocessing.process.BaseProcess.start


def _counting_start(self):
    started.append(self.name)
    return _start(self)


multiprocessing.process.BaseProcess.start = _counting_start


def square(x):
    return x * x


def slow_square(x):
    time.sleep(0.2)
    return x * x


def outcome(call) -> dict:
    """Run ``call``; say how it ended and after how many seconds."""
    begin = time.monotonic()
    try:
        value = call()
    except BaseException as error:
        cause = error.__cause__
        return {
            "error": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": str(error),
            "holders": [h.pid for h in getattr(error, "holders", ())],
            "cause": f"{type(cause).__name__}: {cause}" if cause is not None else None,
            "seconds": time.monotonic() - begin,
        }
    return {"value": value, "seconds": time.monotonic() - begin}


def hold(cpus) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, ",".join(map(str, sorted(cpus))), str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def run_pool(context) -> dict:
    pool = context.Pool(2)
    report = {"map": outcome(lambda: pool.map(square, range(8)))}
    report["apply"] = outcome(lambda: pool.apply_async(square, (3,)).get(timeout=DEADLINE))
    report["imap"] = outcome(lambda: list(pool.imap(square, range(4))))
    report["started"] = len(started)
    time.sleep(1.5)  # a pool that still replaced its workers would start more meanwhile
    report["started_later"] = len(started)
    pool.close()
    report["join"] = outcome(pool.join)
    return report


def run_executor(context) -> dict:
    executor = concurrent.futures.ProcessPoolExecutor(2, mp_context=context)
    report = {"map": outcome(lambda: list(executor.map(square, range(8))))}
    report["submit"] = outcome(lambda: executor.submit(square, 3).result(timeout=DEADLINE))
    report["started"] = len(started)
    time.sleep(1.5)
    report["started_later"] = len(started)
    report["join"] = outcome(lambda: executor.shutdown(wait=True))
    return report


def run_mixed(context, claim_timeout: float) -> dict:
    pool = context.Pool(2)
    time.sleep(claim_timeout + 1.5)  # one worker is up; the other gave up meanwhile
    results = [pool.apply_async(slow_square, (i,)) for i in range(10)]
    report = {"tasks": [outcome(lambda r=r: r.get(timeout=DEADLINE)) for r in results]}
    report["started"] = len(started)
    pool.terminate()
    return report


def main() -> None:
    kind, method, claim_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    watchdog = threading.Timer(
        DEADLINE, lambda: (print(json.dumps({"hung": True, "started": len(started)})), os._exit(3))
    )
    watchdog.daemon = True
    watchdog.start()
    allowed = sorted(os.sched_getaffinity(0))
    holder = hold(allowed[:1] if kind == "mixed" else allowed)
    try:
        context = multiprocessing.get_context(method)
        if kind == "pool":
            report = run_pool(context)
        elif kind == "executor":
            report = run_executor(context)
        else:
            report = run_mixed(context, claim_timeout)
    finally:
        holder.kill()
        holder.wait()
    report["holder"] = holder.pid
    print(json.dumps(report))


if __name__ == "__main__":
    main()
