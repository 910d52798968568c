"""One call through one of pinbackend's front doors; prints what its workers saw from inside.

Usage (``tests/_front_doors.py`` builds these command lines):

- ``python front_door.py joblib|joblib-threads WORKERS [OPTIONS]``: ``Parallel`` on the
  ``"pinned"`` backend (``prefer="threads"`` for the second);
- ``python -m pinbackend [FLAGS] front_door.py pool|executor|threadpool WORKERS [OPTIONS]``:
  an unmodified ``multiprocessing`` Pool, ``ProcessPoolExecutor`` or ``ThreadPool`` under the
  runner (the policy and claim timeout come from the runner's flags);
- ``python -m pinbackend run (-n K | --cores LIST) [FLAGS] -- python front_door.py report``;
- ``python front_door.py dask-plugin|dask-preload WORKERS [OPTIONS]``: a LocalCluster of
  WORKERS one-thread workers, pinned by ``client.register_plugin(PinPlugin(...))`` or by
  the worker preload (``preload=["pinbackend"]``, its options as ``preload_argv``).

OPTIONS: ``--policy P`` and ``--claim-timeout T`` (joblib's keywords, the plugin's, the
preload's flags), ``--hold-own LIST`` (these CPUs held first by a lease of this program's
own, as by a worker of an earlier pool that has not exited yet: the parent plans over them
and the workers' claims for them fail), ``--block`` (every task sleeps until the program
ends), ``--again`` (after the call, release what ``--hold-own`` held and run the call again
for each line read on stdin, until stdin closes; ``report``: wait for stdin to close),
``--kill-one`` (Dask: for each line read on stdin, kill a worker and report again once it is
replaced).

Prints one JSON line per event: ``{"ready": TIME}`` just before the call (Dask: before the
cluster starts, or the plugin is registered), ``{"warning": TEXT}`` as a warning is shown,
``{"result": {...}}`` after each call: ``workers`` (what each worker saw, from inside a task:
:func:`seen`), ``error`` (``Type: message`` of what the call raised), ``seconds`` (the call's
own duration), for Dask also ``rows`` (the placement view: outcome and note per worker).
"""

import json
import os
import sys
import threading
import time
import warnings

#: Seconds each task sleeps, so that every worker of a pool gets one.
DELAY = 0.2
#: Seconds each task sleeps with ``--block``: until the program is ended.
BLOCK = 3600.0


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def show(message, category, filename, lineno, file=None, line=None) -> None:
    emit(warning=f"{category.__name__}: {message}")


def seen(delay: float = DELAY) -> dict:
    """What the task's process and thread run on: pid, thread id, this thread's CPUs, the
    CPUs of every thread of the process, its BLAS cap, ``os.cpu_count()``, the slot variable,
    when the task started."""
    started = time.time()
    import numpy  # noqa: F401  (its BLAS)
    from threadpoolctl import threadpool_info

    time.sleep(delay)
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    masks = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            masks.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
        except OSError:  # the thread has just ended
            pass
    return {
        "pid": os.getpid(),
        "tid": threading.get_native_id(),
        "mask": sorted(os.sched_getaffinity(0)),
        "masks": sorted(masks),
        "blas": max(blas, default=None),
        "cpu_count": os.cpu_count(),
        "slot_env": os.environ.get("PINBACKEND_SLOT"),
        "started": started,
    }


def hold_own(cpus: str):
    """``cpus`` leased as if by a worker of this program's earlier pool, still exiting: the
    program's plans count them as its own, so its new workers cannot claim them."""
    from pinbackend.core.cpuset import parse_cpu_list
    from pinbackend.host.leases import claim

    return claim(parse_cpu_list(cpus), owner=os.getpid(), command="an earlier worker")


def timed(call) -> dict:
    """Run ``call``; its result (a list of :func:`seen` reports) or error, and duration."""
    begun = time.monotonic()
    try:
        workers, error = call(), None
    except BaseException as failure:  # reported to the test
        workers, error = [], f"{type(failure).__name__}: {failure}"
    return {"workers": workers, "error": error, "seconds": time.monotonic() - begun}


def joblib_call(kind: str, workers: int, options: dict, delay: float):
    from joblib import Parallel, delayed

    import pinbackend  # noqa: F401  (registers "pinned")

    hint = {"prefer": "threads"} if kind == "joblib-threads" else {}
    parallel = Parallel(n_jobs=workers, backend="pinned", **hint, **options)
    return lambda: parallel(delayed(seen)(delay) for _ in range(2 * workers))


def runner_call(kind: str, workers: int, delay: float):
    if kind == "pool":
        import multiprocessing

        def call():
            with multiprocessing.Pool(workers) as pool:
                return pool.map(seen, [delay] * 2 * workers)

    elif kind == "executor":
        from concurrent.futures import ProcessPoolExecutor

        def call():
            with ProcessPoolExecutor(workers) as executor:
                return list(executor.map(seen, [delay] * 2 * workers))

    else:
        from multiprocessing.pool import ThreadPool

        def call():
            with ThreadPool(workers) as pool:
                return pool.map(seen, [delay] * 2 * workers)

    return call


def dask(kind: str, workers: int, options: dict, kill_one: bool) -> None:
    """A LocalCluster of ``workers`` one-thread workers, pinned by the plugin or preload;
    with ``kill_one``, for each line read on stdin one worker is killed (SIGKILL, as the OOM
    killer would) and the cluster reported again once its nanny replaced it."""
    from _dask_probes import kill_own_process
    from distributed import Client, LocalCluster

    from pinbackend.dask import PinPlugin, placement

    cluster_options = dict(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
        worker_dashboard_address=None,
    )
    if kind == "dask-preload":
        argv = []
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        cluster_options.update(preload=["pinbackend"], preload_argv=argv)
    emit(ready=time.time())
    begun = time.monotonic()
    with LocalCluster(**cluster_options) as cluster, Client(cluster, timeout=60) as client:
        error = None
        if kind == "dask-plugin":
            try:
                client.register_plugin(PinPlugin(**options))
            except Exception as failure:  # reported to the test
                error = f"{type(failure).__name__}: {failure}"
        while True:
            seconds = time.monotonic() - begun
            result = dask_result(client, placement, workers)
            emit(result={**result, "error": error, "seconds": seconds})
            if not kill_one or not sys.stdin.readline():
                break
            begun = time.monotonic()
            victim = sorted(client.nthreads())[0]
            client.run(kill_own_process, workers=[victim], wait=False)
            deadline = time.monotonic() + 60
            while victim in client.nthreads() or len(client.nthreads()) < workers:
                if time.monotonic() > deadline:
                    raise TimeoutError("the killed worker was not replaced")
                time.sleep(0.1)


def dask_result(client, placement, workers: int) -> dict:
    """Every worker's row of the placement view, what each running one saw, and the pids
    holding leases on this host."""
    from pinbackend.host.holders import list_leases

    deadline = time.monotonic() + 60
    rows = placement(client)
    while len(rows) < workers and time.monotonic() < deadline:
        time.sleep(0.1)  # a worker still starting, or closing without its event yet
        rows = placement(client)
    futures = [
        client.submit(seen, workers=[address], allow_other_workers=False, pure=False)
        for address in sorted(client.nthreads())
    ]
    return {
        "workers": [future.result(timeout=60) for future in futures],
        "rows": [
            {"worker": r.worker, "pid": r.pid, "outcome": r.outcome, "note": r.note} for r in rows
        ],
        "leases": sorted(info.pid for info in list_leases(scope=None)),
    }


def parse(argv: list[str]) -> tuple[str, int, dict, dict]:
    """The kind, the number of workers, the keywords for pinbackend and the other flags."""
    kind, rest = argv[0], argv[1:]
    workers = int(rest.pop(0)) if rest and rest[0].isdigit() else 1
    options, flags = {}, {}
    while rest:
        flag = rest.pop(0)
        if flag == "--policy":
            options["oversubscribe"] = rest.pop(0)
        elif flag == "--claim-timeout":
            options["claim_timeout"] = float(rest.pop(0))
        elif flag == "--hold-own":
            flags["hold-own"] = rest.pop(0)
        else:
            flags[flag.lstrip("-")] = True
    return kind, workers, options, flags


def main() -> None:
    kind, workers, options, flags = parse(sys.argv[1:])
    warnings.simplefilter("always")
    warnings.showwarning = show
    if kind == "report":  # under `run`: this process is the worker
        emit(result=timed(lambda: [seen(0.0)]))
        if "again" in flags:
            sys.stdin.read()
        return
    if kind.startswith("dask"):
        dask(kind, workers, options, "kill-one" in flags)
        return
    delay = BLOCK if "block" in flags else DELAY
    if kind.startswith("joblib"):
        call = joblib_call(kind, workers, options, delay)
    else:
        call = runner_call(kind, workers, delay)
    own = hold_own(flags["hold-own"]) if "hold-own" in flags else None
    emit(ready=time.time())
    emit(result=timed(call))
    while "again" in flags:
        if own is not None:
            own.release()
            own = None
        if not sys.stdin.readline():
            break
        emit(result=timed(call))
    if kind.startswith("joblib"):
        import pinbackend

        pinbackend.shutdown_workers()


if __name__ == "__main__":
    main()
