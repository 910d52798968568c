"""Functions the Dask tests run as tasks: they read what the task thread really gets.

Workers import this module by name (LocalCluster workers inherit the test's ``sys.path``;
``dask worker`` processes get the tests folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import signal
import threading

_barriers: dict[int, threading.Barrier] = {}
_barriers_lock = threading.Lock()


def _pools(user_api: str) -> list[int]:
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == user_api]


def task_report(load_openmp: bool = False) -> dict:
    """Every thread's CPUs, this task thread's own mask and pool sizes, the worker's pin."""
    if load_openmp:
        # scikit-learn's wheels bundle libgomp; loading it makes OpenMP's cap observable.
        import sklearn.utils._openmp_helpers  # noqa: F401
    from pinbackend.dask import current_pin
    from pinbackend.diagnostics import process_report

    report = process_report()
    pin = current_pin()
    report["task_thread"] = {
        "tid": threading.get_native_id(),
        "mask": sorted(os.sched_getaffinity(0)),
        "blas": _pools("blas"),
        "openmp": _pools("openmp"),
    }
    report["pin"] = pin.to_dict() if pin is not None else None
    return report


def concurrent_task_report(parties: int, load_openmp: bool = False) -> dict:
    """Like :func:`task_report`, after ``parties`` tasks met here: each ran in its own thread."""
    with _barriers_lock:
        barrier = _barriers.setdefault(parties, threading.Barrier(parties, timeout=60))
    barrier.wait()
    return task_report(load_openmp)


def openmp_in_thread_started_by_task() -> list[int]:
    """OpenMP's cap as seen by a plain thread that a task starts itself."""
    import sklearn.utils._openmp_helpers  # noqa: F401

    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.extend(_pools("openmp")))
    thread.start()
    thread.join()
    return seen


def initial_environ() -> dict[str, str]:
    """The environment this process was started with (``/proc/self/environ``), which
    later ``os.environ`` changes do not touch: proves what was set before the spawn."""
    with open("/proc/self/environ", "rb") as file:
        entries = file.read().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


def kill_own_worker_once(marker: str) -> dict:
    """Kill this worker process the first time (SIGKILL, as the OOM killer would); the
    task's retry, on whichever worker the scheduler picks, finds the marker and returns
    its :func:`task_report`."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return task_report()
