"""Inside a Dask worker process: claim a slot on this host, pin the process, cap its pools.

Dask workers have no host-local index (``dask worker --nworkers N`` runs N of them from one
process, nannies restart them with new pids), so a worker *claims* its slot: it plans this
host's free cores into slots of its size and leases the first free one. The lease is a
kernel lock that dies with the process, so a restarted or killed worker's cores are free
for its successor without any cleanup. One worker per process: its pinning record is this
process's :data:`~pinbackend.host.state.STATE`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import warnings
from dataclasses import dataclass

from .. import _platform
from .._docs import troubleshooting
from .._platform import AffinityUnavailable
from ..core.cpuset import format_cpu_list
from ..core.planner import PlanError
from ..host.leases import Lease, LeaseError
from ..host.lifecycle import lease_slot
from ..host.machine import read_topology
from ..host.pinning import PinningError, PinningUnavailableWarning, pin
from ..host.slot import AppliedSlot, apply_slot, reset_current_slot
from ..host.state import STATE
from ._executor import TaskThreadCaps
from ._nanny import plan_mismatch
from .options import PinOptions, slot_cores_for, task_thread_cap

__all__ = [
    "PinRefused",
    "WorkerPin",
    "current_pin",
    "pin_worker",
    "unpin_worker",
]

# A child of distributed.worker: dask's logging config, `dask worker` output and
# client.get_worker_logs() show these lines with the worker's own.
logger = logging.getLogger("distributed.worker.pinbackend")


class PinRefused(RuntimeError):
    """A worker with ``fail="closed"`` could not be pinned and refuses to run tasks."""


@dataclass
class WorkerPin:
    """How this worker process was pinned, or why it was not (reported to the client)."""

    source: str
    options: PinOptions
    nthreads: int
    slot: AppliedSlot | None = None
    lease: Lease | None = None
    reason: str | None = None
    original_cpus: frozenset[int] = frozenset()
    task_caps: TaskThreadCaps | None = None

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
        }


def current_pin() -> WorkerPin | None:
    """This worker process's pinning (None where no pinbackend plugin or preload ran)."""
    return STATE.worker_pin


async def pin_worker(worker, options: PinOptions, source: str) -> WorkerPin:
    """Claim a slot for ``worker``, pin all its threads and cap its pools per task thread.

    The first caller in a process wins; a later one (the preload pinned the worker, then a
    client registers :class:`PinPlugin`) keeps that slot and logs a warning if its own
    options differ. Raises :class:`PinRefused` on failure with ``fail="closed"``; with
    ``fail="open"`` logs one warning and returns an unpinned :class:`WorkerPin`.
    """
    if STATE.worker_pin is not None:
        previous = STATE.worker_pin
        if previous.options != options:
            logger.warning(
                "pinbackend: worker %s was already set up by %s (%s); the %s options (%s) "
                "are ignored. See %s",
                worker.address,
                previous.source,
                previous.options.describe(),
                source,
                options.describe(),
                troubleshooting("dask-worker-set-up-twice"),
            )
        return previous
    nthreads = worker.state.nthreads
    state = WorkerPin(source, options, nthreads, original_cpus=_platform.allowed_cpus())
    nanny_mismatch = None
    try:
        _refuse_shared_process(worker)
        # Read before pinning narrows this thread's allowed CPUs: as the nanny read them.
        nanny_mismatch = plan_mismatch(os.environ, nthreads, read_topology(), options)
        state.lease = await _claim_slot(worker, options, nthreads)
        state.slot, state.reason = _apply(state.lease, nthreads)
    except (LeaseError, PlanError, PinningError, AffinityUnavailable) as error:
        state.reason = str(error)
        _abandon(state)
    except Exception as error:  # never let an unexpected failure pass as "pinned"
        state.reason = f"{type(error).__name__}: {error}"
        _abandon(state)
    if state.reason is not None and options.fail == "closed":
        _abandon(state)
        message = (
            f"pinbackend: Dask worker {worker.address} refuses to start (fail=closed): "
            f"{state.reason}. Free cores, start fewer workers, adjust --pin-cores-per-worker "
            f"or --pin-reserve, or choose fail=open. "
            f"See {troubleshooting('dask-worker-refuses-to-start')}"
        )
        logger.error(message)
        raise PinRefused(message)
    if state.reason is not None:
        logger.warning(
            "pinbackend: Dask worker %s runs UNPINNED (fail=open): %s. Its tasks may share "
            "cores with other work. See %s",
            worker.address,
            state.reason,
            troubleshooting("dask-worker-runs-unpinned"),
        )
    if state.slot is not None:  # pinned, or holding a slot where affinity is unavailable
        state.task_caps = TaskThreadCaps(state.slot.threads)
        state.task_caps.install(worker.executors.values())
        if nanny_mismatch is not None:
            logger.warning(
                "pinbackend: worker %s: %s. Its task threads get %d all the same (capped at "
                "run time), but threads a task starts itself keep the nanny's count. Give "
                "the nanny part the same --pin-cores-per-worker (distributed.nanny.preload-argv "
                "for --preload-nanny pinbackend). See %s",
                worker.address,
                nanny_mismatch,
                state.slot.threads,
                troubleshooting("dask-nanny-planned-otherwise"),
            )
    if state.pinned:
        logger.info(
            "pinbackend: worker %s pinned to CPUs %s, %d task thread(s) x %d BLAS/OpenMP "
            "thread(s) each",
            worker.address,
            format_cpu_list(state.slot.cores),
            nthreads,
            state.slot.threads,
        )
    STATE.worker_pin = state
    return state


def _abandon(state: WorkerPin) -> None:
    """Give back what a failed attempt took: its lease, its slot record, moved threads.

    A worker that only lacks CPU affinity keeps its slot and caps under fail=open; this is
    for every other failure, and for any failure under fail=closed.
    """
    if state.lease is None:
        return  # nothing was claimed, so no thread was touched
    state.lease.release()
    state.lease, state.slot = None, None
    reset_current_slot()
    try:
        pin(state.original_cpus)  # pinning may have failed half-way
    except (PinningError, AffinityUnavailable, OSError):
        pass  # affinity could not be set at all: nothing moved


def unpin_worker(worker, source: str) -> None:
    """Undo what :func:`pin_worker` did for ``source``: release the lease, restore the
    threads' original CPUs and the executors. A no-op for another source's pinning."""
    state = STATE.worker_pin
    if state is None or state.source != source:
        return
    STATE.worker_pin = None
    if state.task_caps is not None:
        state.task_caps.uninstall()
    if state.slot is not None and state.slot.pinned and state.original_cpus:
        try:
            pin(state.original_cpus)
        except (PinningError, AffinityUnavailable, OSError) as error:
            logger.warning(
                "pinbackend: could not give worker %s its CPUs %s back after releasing its "
                "slot: %s. See %s",
                worker.address,
                format_cpu_list(state.original_cpus),
                error,
                troubleshooting("dask-worker-cpus-not-restored"),
            )
    reset_current_slot()
    if state.lease is not None:
        state.lease.release()


def _refuse_shared_process(worker) -> None:
    """Pinning acts on a whole process: refuse when the worker shares it with others."""
    from distributed import Scheduler, Worker
    from distributed.core import Status

    closed = (Status.closing, Status.closed, Status.failed)
    others = [w for w in list(Worker._instances) if w is not worker and w.status not in closed]
    schedulers = [s for s in list(Scheduler._instances) if s.status not in closed]
    if others or schedulers:
        raise PinningError(
            f"worker {worker.address} shares its process (pid {os.getpid()}) with "
            f"{len(others)} other worker(s) and {len(schedulers)} scheduler(s), so pinning it "
            f"would pin them all; run workers in their own processes "
            f"(LocalCluster(processes=True), dask worker)"
        )


async def _claim_slot(worker, options: PinOptions, nthreads: int) -> Lease:
    """The lifecycle's claim of one slot of this worker's size, off the event loop.

    Waits up to ``options.claim_timeout`` while other leases hold cores (a predecessor
    exiting, siblings starting at the same moment); an impossible plan fails at once.
    """
    cores = slot_cores_for(nthreads, read_topology(), options)
    command = f"dask worker {worker.address}"
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(lease_slot, cores, options, command=command)
    )


def _apply(lease: Lease, nthreads: int) -> tuple[AppliedSlot, str | None]:
    """Pin and cap; return the slot and, where affinity is unavailable, why it is unpinned.

    The 'pinning unavailable' warning of :func:`apply_slot` becomes that reason instead of a
    second log line: the fail policy decides what to say.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slot = apply_slot(
            lease.cores,
            lease=lease,
            threads=task_thread_cap(len(lease.cores), nthreads),
            own_process=True,
        )
    reasons = [w for w in caught if issubclass(w.category, PinningUnavailableWarning)]
    for other in caught:
        if other not in reasons:  # e.g. threadpoolctl's: not ours to swallow
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if slot.pinned:
        return slot, None
    return slot, str(reasons[0].message) if reasons else "CPU affinity cannot be set here"
