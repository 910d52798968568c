"""The client's view of a cluster's placement: per host its shape, per worker its cores,
threads and caps, and which workers were closed or share, and why.

Running workers are measured inside a task on each, so the view shows what tasks actually
get: every thread's CPU mask read from ``/proc``, and the BLAS/OpenMP pool sizes as the
task thread sees them (OpenMP's is per thread). Workers pinbackend closed are gone: they
are shown from the event each recorded on the scheduler before closing.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass

from ..core.cpuset import format_cpu_list

__all__ = [
    "WorkerPlacement",
    "format_placement",
    "gone_workers",
    "host_lines",
    "measure_task_thread",
    "placement",
]


@dataclass(frozen=True)
class WorkerPlacement:
    """Where one worker runs, as seen from inside one of its tasks.

    ``cores`` is the slot pinbackend gave it (None when unpinned); ``cpus`` is the union of
    the CPU masks of all its threads (the task thread's own where they cannot be read).
    ``threads_on_slot`` is True when every thread's mask was read and is exactly the slot,
    False when one is not (or there is no slot), None when the masks could not be read: no
    evidence is not proof. ``blas_threads``/``openmp_threads`` are the largest pool sizes a
    task thread sees (None where no such library is loaded). ``reason`` says why it is
    unpinned. ``outcome`` is what pinbackend did with it: ``pinned``, ``shared`` (a slot
    shared with other workers), ``closed`` (the host had no slot for it), ``refused`` (it
    could not be pinned, or ``oversubscribe="error"``), ``unpinned`` (``fail="open"``), or
    None (no pinbackend plugin or preload ran). ``note`` is the host's shape where the
    policy had to act.
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
    outcome: str | None = None
    note: str | None = None

    @property
    def running(self) -> bool:
        """Whether the worker is there to run tasks (closed and refused ones are gone)."""
        return self.outcome not in ("closed", "refused")

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
        "outcome": pin.outcome if pin is not None else None,
        "note": pin.note if pin is not None else None,
    }


def _gone_row(event: dict) -> WorkerPlacement:
    """A closed or refused worker, from the event it recorded before closing."""
    cores = event.get("cores")
    return WorkerPlacement(
        worker=str(event.get("worker")),
        name=str(event.get("name")),
        host=str(event.get("host")),
        pid=int(event.get("pid") or 0),
        nthreads=int(event.get("nthreads") or 0),
        cores=tuple(cores) if cores else None,
        pinned=False,
        cpus=(),
        threads_on_slot=False,
        blas_threads=None,
        openmp_threads=None,
        source=event.get("source"),
        reason=event.get("reason"),
        outcome=event.get("outcome"),
        note=event.get("note"),
    )


def gone_workers(client, live: set[str]) -> list[WorkerPlacement]:
    """Workers pinbackend closed that are not among ``live`` (the last event of each)."""
    from ._outcome import EVENT_TOPIC, GONE

    rows: dict[str, WorkerPlacement] = {}
    for _, event in client.get_events(EVENT_TOPIC):
        if isinstance(event, dict) and event.get("outcome") in GONE:
            rows[str(event.get("worker"))] = _gone_row(event)
    return [row for address, row in rows.items() if address not in live]


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
    """Return every worker's placement: running ones measured by one high-priority task on
    each, closed and refused ones from their events.

    ``timeout`` bounds the wait for a free task thread on every worker; a busy cluster
    raises ``TimeoutError`` rather than hanging. A worker that leaves meanwhile (closing)
    is shown from its event, or not at all.
    """
    from distributed import wait

    run = uuid.uuid4().hex[:8]
    futures = {
        address: client.submit(
            measure_task_thread,
            key=f"pinbackend-placement-{run}-{address}",
            workers=[address],
            allow_other_workers=False,
            pure=False,
            priority=1000,
        )
        for address in sorted(client.nthreads())
    }
    deadline = time.monotonic() + timeout
    try:
        while True:
            pending = [f for f in futures.values() if not f.done()]
            if not pending:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"placement: {len(pending)} worker(s) ran no measuring task within "
                    f"{timeout:g}s (all their task threads busy?)"
                )
            try:
                wait(pending, timeout=0.5)
            except TimeoutError:
                live = client.nthreads()
                for address in [a for a, f in futures.items() if not f.done()]:
                    if address not in live:  # it left: its task can never run
                        futures.pop(address).release()
        rows = dict(zip(futures, client.gather(list(futures.values())), strict=True))
    finally:
        for future in futures.values():
            future.release()
    measured = [WorkerPlacement(**row) for row in rows.values()]
    every = measured + gone_workers(client, set(rows))
    return sorted(
        every,
        key=lambda p: (p.host, not p.running, p.cores or (float("inf"),), p.worker),
    )


def host_lines(rows: list[WorkerPlacement]) -> list[str]:
    """One line per host: its workers by outcome and threads, then each distinct note.

    >>> rows = [
    ...     WorkerPlacement("tcp://a:1", "0", "h", 1, 1, (0,), True, (0,), True, 1, None,
    ...                     outcome="pinned"),
    ...     WorkerPlacement("tcp://a:2", "1", "h", 2, 1, None, False, (), False, None, None,
    ...                     outcome="closed", note="1 worker x 1 thread fits ..."),
    ... ]
    >>> print("\\n".join(host_lines(rows)))
    host h: 2 workers x 1 thread: 1 pinned, 1 closed
      1 worker x 1 thread fits ...
    """
    lines = []
    for host in sorted({row.host for row in rows}):
        mine = [row for row in rows if row.host == host]
        threads = sorted({row.nthreads for row in mine})
        shape = "/".join(map(str, threads))
        outcomes = Counter(row.outcome or "not set up" for row in mine)
        order = ["pinned", "shared", "unpinned", "closed", "refused", "not set up"]
        counted = ", ".join(f"{outcomes[name]} {name}" for name in order if outcomes[name])
        workers = "worker" if len(mine) == 1 else "workers"
        thread_word = "thread" if threads == [1] else "threads"
        lines.append(f"host {host}: {len(mine)} {workers} x {shape} {thread_word}: {counted}")
        for note in dict.fromkeys(row.note for row in mine if row.note):
            lines.append(f"  {note}")
    return lines


def format_placement(rows: list[WorkerPlacement]) -> str:
    """For people: each host's shape, a table with one line per worker, then why any worker
    is not shown pinned.

    "pinned" is ``yes`` (or ``shared``, on a slot shared with other workers) only with
    evidence: every thread's mask read and on the slot; ``unknown`` where the masks could
    not be read; ``closed`` or ``refused`` for workers pinbackend closed (gone).
    """
    header = ("worker", "host", "pid", "cores", "threads", "BLAS", "OpenMP", "pinned")
    lines = [header]
    notes = []
    verified = Counter()
    for row in rows:
        pinned = "NO"
        if not row.running:
            pinned = row.outcome
            if row.outcome == "refused" and row.reason:
                notes.append(f"{row.worker}: refused: {row.reason}")
        elif not row.pinned:
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
            pinned = "shared" if row.outcome == "shared" else "yes"
        verified[pinned] += 1
        if not row.running:
            cores = "-"
        elif row.cores:
            cores = format_cpu_list(row.cores)
        else:
            cores = f"({format_cpu_list(row.cpus)})"
        lines.append(
            (
                row.worker,
                row.host,
                str(row.pid),
                cores,
                str(row.nthreads),
                "-" if row.blas_threads is None else str(row.blas_threads),
                "-" if row.openmp_threads is None else str(row.openmp_threads),
                pinned,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = host_lines(rows)
    text += [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    hosts = len({row.host for row in rows})
    others = "".join(
        f", {verified[name]} {name}" for name in ("shared", "closed", "refused") if verified[name]
    )
    text.append(f"{len(rows)} worker(s) on {hosts} host(s), {verified['yes']} pinned{others}.")
    text.append(
        "threads: task threads per worker. BLAS, OpenMP: pool sizes seen inside a task "
        "thread ('-': not loaded). (cores): unpinned, the CPUs its threads may use."
    )
    text.extend(notes)
    return "\n".join(text)
