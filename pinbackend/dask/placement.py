"""The client's view of a cluster's placement: per worker, its host, cores, threads and caps.

Everything is measured inside a task on each worker, so the view shows what tasks actually
get: every thread's CPU mask read from ``/proc``, and the BLAS/OpenMP pool sizes as the
task thread sees them (OpenMP's is per thread).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass

from ..core.cpuset import format_cpu_list

__all__ = ["WorkerPlacement", "format_placement", "measure_task_thread", "placement"]


@dataclass(frozen=True)
class WorkerPlacement:
    """Where one worker runs, as seen from inside one of its tasks.

    ``cores`` is the slot pinbackend gave it (None when unpinned); ``cpus`` is the union of
    the CPU masks of all its threads (the task thread's own where they cannot be read).
    ``threads_on_slot`` is True when every thread's mask was read and is exactly the slot,
    False when one is not (or there is no slot), None when the masks could not be read: no
    evidence is not proof. ``blas_threads``/``openmp_threads`` are the largest pool sizes a
    task thread sees (None where no such library is loaded). ``reason`` says why it is
    unpinned.
    """

    worker: str
    name: str
    host: str
    pid: int
    nthreads: int
    cores: tuple[int, ...] | None
    pinned: bool
    cpus: tuple[int, ...]
    threads_on_slot: bool | None
    blas_threads: int | None
    openmp_threads: int | None
    source: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        """Plain data (JSON)."""
        return asdict(self)


def measure_task_thread() -> dict:
    """Run inside a task: describe this worker and the pools as this task thread sees them."""
    from distributed import get_worker

    from ..diagnostics import process_report
    from ._worker import current_pin

    worker = get_worker()
    report = process_report()
    pin = current_pin()
    slot = pin.slot if pin is not None else None
    masks = [frozenset(cpus) for cpus in report["threads"].values()]
    return {
        "worker": worker.address,
        "name": str(worker.name),
        "host": report["host"],
        "pid": report["pid"],
        "nthreads": worker.state.nthreads,
        "cores": tuple(sorted(slot.cores)) if slot is not None else None,
        "pinned": pin is not None and pin.pinned,
        "cpus": tuple(sorted(frozenset().union(*masks) if masks else report["affinity"])),
        "threads_on_slot": _threads_on_slot(masks, slot.cores if slot is not None else None),
        "blas_threads": _largest(report, "blas"),
        "openmp_threads": _largest(report, "openmp"),
        "source": pin.source if pin is not None else None,
        "reason": pin.reason if pin is not None else "no pinbackend plugin or preload ran",
    }


def _threads_on_slot(masks: list[frozenset[int]], slot: frozenset[int] | None) -> bool | None:
    """Whether every thread's CPU mask is exactly ``slot``; None when no mask was read.

    >>> _threads_on_slot([frozenset({0}), frozenset({0})], frozenset({0}))
    True
    >>> _threads_on_slot([frozenset({0}), frozenset({0, 1})], frozenset({0}))
    False
    >>> _threads_on_slot([], frozenset({0})) is None  # /proc unreadable: not verified
    True
    >>> _threads_on_slot([frozenset({0})], None)  # no slot: nothing to be on
    False
    """
    if slot is None:
        return False
    if not masks:
        return None
    return all(mask == slot for mask in masks)


def _largest(report: dict, user_api: str) -> int | None:
    sizes = [p["num_threads"] for p in report["thread_pools"] if p["user_api"] == user_api]
    return max(sizes) if sizes else None


def placement(client, *, timeout: float = 60.0) -> list[WorkerPlacement]:
    """Return every worker's placement, measured by one high-priority task on each.

    ``timeout`` bounds the wait for a free task thread on every worker; a busy cluster
    raises ``TimeoutError`` rather than hanging.
    """
    from distributed import wait

    run = uuid.uuid4().hex[:8]
    futures = [
        client.submit(
            measure_task_thread,
            key=f"pinbackend-placement-{run}-{address}",
            workers=[address],
            allow_other_workers=False,
            pure=False,
            priority=1000,
        )
        for address in sorted(client.nthreads())
    ]
    try:
        wait(futures, timeout=timeout)
        rows = client.gather(futures)
    finally:
        for future in futures:
            future.release()
    return sorted(
        (WorkerPlacement(**row) for row in rows),
        key=lambda p: (p.host, p.cores or (float("inf"),), p.worker),
    )


def format_placement(rows: list[WorkerPlacement]) -> str:
    """A table for people: one line per worker, then why any worker is not shown pinned.

    "pinned" is ``yes`` only with evidence: every thread's mask read and on the slot;
    ``unknown`` where the masks could not be read.
    """
    header = ("worker", "host", "pid", "cores", "threads", "BLAS", "OpenMP", "pinned")
    lines = [header]
    notes = []
    for row in rows:
        pinned = "NO"
        if not row.pinned:
            notes.append(f"{row.worker}: unpinned: {row.reason}")
        elif row.threads_on_slot is None:
            pinned = "unknown"
            notes.append(
                f"{row.worker}: its threads' CPU masks could not be read (/proc/{row.pid}/task),"
                f" so its pinning is not verified"
            )
        elif not row.threads_on_slot:
            notes.append(
                f"{row.worker}: some threads run outside the slot (CPUs "
                f"{format_cpu_list(row.cpus)})"
            )
        else:
            pinned = "yes"
        lines.append(
            (
                row.worker,
                row.host,
                str(row.pid),
                format_cpu_list(row.cores) if row.cores else f"({format_cpu_list(row.cpus)})",
                str(row.nthreads),
                "-" if row.blas_threads is None else str(row.blas_threads),
                "-" if row.openmp_threads is None else str(row.openmp_threads),
                pinned,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    hosts = len({row.host for row in rows})
    pinned_count = sum(row.pinned and row.threads_on_slot is True for row in rows)
    text.append(f"{len(rows)} worker(s) on {hosts} host(s), {pinned_count} pinned.")
    text.append(
        "threads: task threads per worker. BLAS, OpenMP: pool sizes seen inside a task "
        "thread ('-': not loaded). (cores): unpinned, the CPUs its threads may use."
    )
    text.extend(notes)
    return "\n".join(text)
