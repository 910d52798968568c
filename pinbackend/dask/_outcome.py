"""What happened to a Dask worker's pinning, told everywhere it should be: the worker's log
(once per host for what the policy did, :mod:`pinbackend.dask._notice`), an event on the
scheduler (topic :data:`EVENT_TOPIC`, which the placement view reads for workers that are
gone), and, for a worker that must not run, its end, with its nanny.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

from .._docs import troubleshooting
from ..core.cpuset import format_cpu_list
from ..host.leases import Lease
from ..host.slot import AppliedSlot
from ._executor import TaskThreadCaps
from ._notice import first_on_host
from .options import PinOptions

__all__ = [
    "CLOSE_REASON",
    "EVENT_TOPIC",
    "GONE",
    "WorkerPin",
    "close_worker",
    "log_outcome",
    "outcome_event",
    "report_outcome",
    "tell_host",
]

# A child of distributed.worker: dask's logging config, `dask worker` output and
# client.get_worker_logs() show these lines with the worker's own.
logger = logging.getLogger("distributed.worker.pinbackend")

#: Scheduler event topic of every worker's outcome (the placement view reads it).
EVENT_TOPIC = "pinbackend"
#: The reason a worker closes with when pinbackend closes it (scheduler events show it).
CLOSE_REASON = "pinbackend-pinning-refused"
#: Outcomes of a worker that does not run tasks.
GONE = ("closed", "refused")


@dataclass
class WorkerPin:
    """How this worker process was pinned, or why it was not (reported to the client).

    ``outcome``: ``pinned`` (a slot of its own), ``shared`` (a slot shared with other
    workers, ``oversubscribe="share"``), ``closed`` (the policy closed it: the host's slots
    are taken), ``refused`` (``oversubscribe="error"``, or it cannot be pinned and
    ``fail="closed"``) or ``unpinned`` (it cannot be pinned and ``fail="open"``). ``note``
    says what the host's shape is when the policy had to act. ``slot`` remembers what
    applying it changed, which unpinning puts back
    (:func:`pinbackend.dask._worker.unpin_worker`).
    """

    source: str
    options: PinOptions
    nthreads: int
    slot: AppliedSlot | None = None
    lease: Lease | None = None
    reason: str | None = None
    task_caps: TaskThreadCaps | None = None
    outcome: str = "pinned"
    note: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether every thread of the worker runs on its slot."""
        return self.slot is not None and self.slot.pinned

    def to_dict(self) -> dict:
        """Plain data for the placement view."""
        return {
            "source": self.source,
            "options": self.options.describe(),
            "pinned": self.pinned,
            "cores": sorted(self.slot.cores) if self.slot else None,
            "task_thread_cap": self.slot.threads if self.slot else None,
            "lease_id": self.lease.lease_id if self.lease else None,
            "reason": self.reason,
            "outcome": self.outcome,
            "note": self.note,
        }


def log_outcome(worker, state: WorkerPin, nanny_mismatch: str | None) -> None:
    """Say what happened to a worker once, at the level it deserves: an error for a refusal,
    a warning for a worker that runs unpinned or whose nanny planned otherwise, info when
    pinned."""
    if state.outcome == "refused" and state.note is None:
        logger.error(
            "pinbackend: Dask worker %s refuses to start (fail=closed): %s. Fix the cause, "
            "or choose fail=open to run it unpinned. See %s",
            worker.address,
            state.reason,
            troubleshooting("dask-worker-refuses-to-start"),
        )
    elif state.outcome == "unpinned":
        logger.warning(
            "pinbackend: Dask worker %s runs UNPINNED (fail=open): %s. Its tasks may share "
            "cores with other work. See %s",
            worker.address,
            state.reason,
            troubleshooting("dask-worker-runs-unpinned"),
        )
    if state.slot is not None and nanny_mismatch is not None:
        logger.warning(
            "pinbackend: worker %s: %s. Its task threads get %d all the same (capped at "
            "run time), but threads a task starts itself keep the nanny's count. Give "
            "the nanny part the same --cores-per-worker (distributed.nanny.preload-argv "
            "for --preload-nanny pinbackend). See %s",
            worker.address,
            nanny_mismatch,
            state.slot.threads,
            troubleshooting("dask-nanny-planned-otherwise"),
        )
    if state.pinned:
        logger.info(
            "pinbackend: worker %s pinned to CPUs %s%s, %d task thread(s) x %d BLAS/OpenMP "
            "thread(s) each",
            worker.address,
            format_cpu_list(state.slot.cores),
            " (shared)" if state.outcome == "shared" else "",
            state.nthreads,
            state.slot.threads,
        )


def tell_host(worker, state: WorkerPin, view, is_sibling, remedy: str) -> None:
    """Warn once per host and outcome (the first worker there); the others log at INFO."""
    key = f"{worker.scheduler.address} {state.outcome} {state.note}"
    siblings = [info.lease_id for info in view.leases if is_sibling(info)]
    if not first_on_host(key, siblings):
        logger.info("pinbackend: worker %s %s: %s", worker.address, state.outcome, state.note)
    elif state.outcome == "shared":
        logger.warning(
            "pinbackend: %s; %s. See %s",
            state.note,
            remedy,
            troubleshooting("dask-workers-share-cores"),
        )
    else:
        logger.warning(
            "pinbackend: %s; %s. See %s",
            state.note,
            remedy,
            troubleshooting("dask-workers-closed"),
        )


def outcome_event(worker, state: WorkerPin) -> dict:
    """The scheduler event for ``state`` (plain, msgpack-able data)."""
    return {
        "worker": worker.address,
        "name": str(worker.name),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "nthreads": state.nthreads,
        "outcome": state.outcome,
        "cores": sorted(state.slot.cores) if state.slot else None,
        "reason": state.reason,
        "note": state.note,
        "source": state.source,
    }


async def report_outcome(worker, state: WorkerPin) -> None:
    """Record ``state`` on the scheduler, awaited (best effort: a closing cluster may not
    answer), so that a client asking right after sees it."""
    try:
        await asyncio.wait_for(
            worker.scheduler.log_event(topic=EVENT_TOPIC, msg=outcome_event(worker, state)), 10
        )
    except Exception as error:  # the report is not worth failing the worker for
        logger.debug("pinbackend: could not record %s on the scheduler: %s", state.outcome, error)


async def close_worker(worker, state: WorkerPin) -> None:
    """Close a worker whose outcome is ``closed`` or ``refused``, with its nanny (so that it
    is not restarted), before it runs any task; record its outcome on the scheduler first.

    A worker already registered (a plugin's setup) stops taking tasks at once (status
    ``closing_gracefully``, as when the scheduler retires it; nothing is awaited between
    that and the end of the setup, before which the scheduler's messages are not read), then
    asks its nanny to end it: the nanny stops the worker process the way it stops any, so
    distributed reports no dead process. A worker not registered yet (the preload) registers
    first and ends instead of reading the scheduler's messages: no failed start, no wall of
    tracebacks.
    """
    from distributed.core import Status

    if worker.status == Status.init:

        async def end_instead_of_handling(comm) -> None:
            await report_outcome(worker, state)
            worker.status = Status.closing_gracefully
            await _end(worker)

        worker.handle_scheduler = end_instead_of_handling
        return
    await report_outcome(worker, state)
    worker.status = Status.closing_gracefully
    worker.loop.add_callback(_end, worker)


async def _end(worker) -> None:
    """Have the nanny end this worker and itself; close the worker alone without one."""
    if worker.nanny:
        try:
            async with worker.rpc(worker.nanny) as nanny:
                await nanny.terminate(reason=CLOSE_REASON)
            return
        except Exception as error:  # the nanny is gone or unreachable: close ourselves
            logger.debug("pinbackend: nanny %s did not end worker: %s", worker.nanny, error)
    await worker.close(nanny=bool(worker.nanny), reason=CLOSE_REASON)
