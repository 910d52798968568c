"""Functions the Dask tests run as tasks: they read what the task thread really gets.

Workers import this module by name (LocalCluster workers inherit the test's ``sys.path``;
``dask worker`` processes get the tests folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading

#: The file ``--preload _dask_probes`` waits for before the worker goes on starting.
GATE_ENV = "PINBACKEND_TEST_GATE"

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


async def dask_setup(worker) -> None:
    """As ``--preload _dask_probes``: hold the worker's start until the file named by
    ``$PINBACKEND_TEST_GATE`` exists (no variable: no wait).

    Preloads run before the worker registers with the scheduler, which is when it gets
    its plugins: a test can act between a new worker process's start and its PinPlugin
    setup (take the cores its killed predecessor left) without racing it.
    """
    gate = os.environ.get(GATE_ENV)
    while gate and not os.path.exists(gate):
        await asyncio.sleep(0.05)


def record_run(path: str) -> int:
    """Write this worker's pid and pinning to ``path``: proof that a task ran, and where."""
    from pinbackend.dask import current_pin

    pin = current_pin()
    with open(path, "w") as file:
        json.dump({"pid": os.getpid(), "pin": pin.to_dict() if pin else None}, file)
    return os.getpid()


async def kill_own_process() -> None:
    """SIGKILL this worker process (as the OOM killer would); its nanny starts a new one.
    A coroutine, so that ``client.run(kill_own_process, wait=False)`` accepts it."""
    os.kill(os.getpid(), signal.SIGKILL)


def kill_own_worker_once(marker: str) -> dict:
    """Kill this worker process the first time (SIGKILL, as the OOM killer would); the
    task's retry, on whichever worker the scheduler picks, finds the marker and returns
    its :func:`task_report`."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return task_report()


def placement_with_thread_masks_unreadable() -> dict:
    """:func:`~pinbackend.dask.placement.measure_task_thread` where ``/proc/self/task``
    cannot be listed, as under a restrictive sandbox.

    It runs in a thread of its own that seccomp forbids to list directories (``getdents``
    fails with EPERM in that thread only, so the worker's task thread is unaffected); that
    thread runs in a copy of the task's context, where ``get_worker()`` finds the worker.
    """
    import contextvars

    from pinbackend.dask.placement import measure_task_thread

    measure_task_thread()  # every import and lazy lookup done before the filter
    outcome: dict = {}

    def measure() -> None:
        _forbid_in_this_thread("getdents64", "getdents")
        try:
            os.listdir("/proc/self/task")
        except PermissionError:
            pass
        else:
            outcome["error"] = "the seccomp filter did not stop listing /proc/self/task"
            return
        try:
            outcome["row"] = measure_task_thread()
        except Exception as error:  # raised again in the task thread
            outcome["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=contextvars.copy_context().run, args=(measure,))
    thread.start()
    thread.join()
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    return outcome["row"]


def _forbid_in_this_thread(*syscalls: str) -> None:
    """Make ``syscalls`` fail with EPERM in the calling thread (libseccomp, no TSYNC)."""
    import ctypes
    import ctypes.util
    import errno

    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"))
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(0x7FFF0000)  # allow everything else
    for name in syscalls:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # getdents does not exist on every architecture
            assert lib.seccomp_rule_add(context, 0x00050000 | errno.EPERM, number, 0) == 0
    assert lib.seccomp_load(context) == 0


def pools_in_thread_started_by_task() -> dict:
    """What a plain thread that a task starts itself gets: its CPU mask and the BLAS and
    OpenMP pool sizes it sees (OpenMP's default for a new thread comes from the
    environment OpenMP loaded with, unless something caps that thread)."""
    import sklearn.utils._openmp_helpers  # noqa: F401

    seen: dict = {}

    def look() -> None:
        seen["mask"] = sorted(os.sched_getaffinity(0))
        seen["blas"] = _pools("blas")
        seen["openmp"] = _pools("openmp")

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    return seen


_late_threads: list[int] = []


def slot_effects(caps: int | None = None, start_thread: bool = False) -> dict:
    """What a worker's slot changes, read in the thread ``client.run`` runs in (the event
    loop's, where the plugin applies and undoes the slot): every thread's CPUs, the BLAS and
    OpenMP pools' sizes, the variables a slot sets, ``os.cpu_count()``.

    ``caps`` first sizes the pools as a user would have (so that their restoring shows);
    ``start_thread`` starts a thread that lives on (inside the slot, if one is applied).
    """
    import numpy  # noqa: F401 (its BLAS)
    import sklearn.utils._openmp_helpers  # noqa: F401 (an OpenMP runtime)
    from threadpoolctl import threadpool_info, threadpool_limits

    if caps is not None:
        threadpool_limits(limits=caps)
    if start_thread:
        thread = threading.Thread(target=threading.Event().wait, daemon=True)
        thread.start()
        _late_threads.append(thread.native_id)
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHON_CPU_COUNT")
    return {
        "masks": {
            tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir("/proc/self/task")
        },
        "pools": sorted((p["user_api"], p["num_threads"]) for p in threadpool_info()),
        "env": {
            name: os.environ.get(name)
            for name in os.environ.keys() | set(names)
            if name in names or name.startswith("PINBACKEND_")
        },
        "cpu_count": os.cpu_count(),
        "late": list(_late_threads),
    }
