"""Inside a Dask worker process: claim a slot on this host, pin the process, cap its pools.

Dask workers have no host-local index (``dask worker --nworkers N`` runs N of them from one
process, nannies restart them with new pids), so a worker *claims* its slot: it plans this
host's free cores into slots of its size and leases the first free one. The lease is a
kernel lock that dies with the process, so a restarted or killed worker's cores are free
for its successor without any cleanup. One worker per process: its pinning record is this
process's :data:`~pinbackend.host.state.STATE`.

A lease's command names the worker's scheduler, so a starting worker tells its own
cluster's workers (its *siblings*) from other jobs. Waiting for siblings cannot help: when
they hold every slot of its size on this host, the policy applies at once
(``oversubscribe``: ``clamp`` closes the worker, ``share`` shares the slot fewest of them
hold, ``error`` refuses). Cores that other jobs hold are waited for, up to the claim
timeout (without bound under ``wait``), then the policy applies. ``fail`` is for a worker
that cannot be pinned at all (no affinity here, a slot that cannot fit the host, workers
sharing one process): ``closed`` closes it, ``open`` runs it unpinned.

Every outcome is reported (:mod:`pinbackend.dask._outcome`): a log line, one warning per
host for what the policy did, and an event on the scheduler that the placement view reads
for workers that are gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import warnings

from .._docs import troubleshooting
from .._platform import AffinityUnavailable
from ..core.cpuset import format_cpu_list
from ..core.planner import PlanError
from ..host.groups import group_room
from ..host.holders import LeaseInfo
from ..host.leases import Lease
from ..host.lifecycle import lease_slot, release_slot
from ..host.machine import read_topology
from ..host.pinning import PinningError, PinningUnavailableWarning
from ..host.policy import ClaimFailed
from ..host.registry import LeaseError
from ..host.slot import AppliedSlot, apply_slot
from ..host.state import STATE
from ..host.view import survey
from ._executor import TaskThreadCaps
from ._nanny import plan_mismatch
from ._outcome import WorkerPin, log_outcome, tell_host
from .options import PinOptions, host_shape, slot_cores_for, task_thread_cap

__all__ = [
    "PinRefused",
    "WorkerPin",
    "current_pin",
    "pin_worker",
    "refuse_invalid_options",
    "unpin_worker",
]

# A child of distributed.worker: dask's logging config, `dask worker` output and
# client.get_worker_logs() show these lines with the worker's own.
logger = logging.getLogger("distributed.worker.pinbackend")


class PinRefused(RuntimeError):
    """A worker refused to run: ``oversubscribe="error"`` and no slot for it."""


def current_pin() -> WorkerPin | None:
    """This worker process's pinning (None where no pinbackend plugin or preload ran)."""
    return STATE.worker_pin


def member_command(worker_address: str, scheduler_address: str) -> str:
    """The command a worker's lease records: ``status`` shows it; siblings recognize it."""
    return f"dask worker {worker_address} of scheduler {scheduler_address}"


def _sibling(scheduler_address: str):
    tail = f" of scheduler {scheduler_address}"
    me = os.getpid()

    def is_sibling(info: LeaseInfo) -> bool:
        return (
            info.pid != me
            and info.command.startswith("dask worker ")
            and (info.command.endswith(tail))
        )

    return is_sibling


async def pin_worker(worker, options: PinOptions, source: str) -> WorkerPin:
    """Claim a slot for ``worker``, pin all its threads and cap its pools per task thread.

    The first caller in a process wins; a later one (the preload pinned the worker, then a
    client registers :class:`PinPlugin`) keeps that slot and logs a warning if its own
    options differ. Never raises for a worker that does not fit: the returned
    :class:`WorkerPin`'s ``outcome`` says what the policy decided, and a caller closes the
    worker when it is ``closed`` or ``refused`` (:func:`close_worker`).
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
    state = WorkerPin(source, options, nthreads)
    nanny_mismatch = None
    try:
        _refuse_shared_process(worker)
        # Read before pinning narrows this thread's allowed CPUs: as the nanny read them.
        topology = read_topology()
        nanny_mismatch = plan_mismatch(os.environ, nthreads, topology, options)
        await _claim_slot(worker, state, slot_cores_for(nthreads, topology, options))
        if state.lease is not None:
            state.slot, state.reason = _apply(state.lease, nthreads)
            if state.reason is not None:
                state.outcome = "unpinned"
    except (LeaseError, PlanError, PinningError, AffinityUnavailable) as error:
        state.reason, state.outcome = str(error), "unpinned"
        _abandon(state)
    except Exception as error:  # never let an unexpected failure pass as "pinned"
        state.reason, state.outcome = f"{type(error).__name__}: {error}", "unpinned"
        _abandon(state)
    if state.outcome == "unpinned" and options.fail == "closed":
        _abandon(state)
        state.outcome = "refused"
    if state.slot is not None:  # pinned, or holding a slot where affinity is unavailable
        state.task_caps = TaskThreadCaps(state.slot.threads)
        state.task_caps.install(worker.executors.values())
    log_outcome(worker, state, nanny_mismatch)
    STATE.worker_pin = state
    return state


def refuse_invalid_options(worker, source: str, error: str) -> WorkerPin:
    """The outcome of a worker whose options are invalid: it refuses to start, whatever
    ``fail`` says (an invalid value could be the ``fail`` itself); a caller closes it."""
    state = WorkerPin(
        source,
        PinOptions(),
        worker.state.nthreads,
        reason=f"invalid options: {error}",
        outcome="refused",
    )
    logger.error(
        "pinbackend: Dask worker %s refuses to start: its pinbackend options are invalid: "
        "%s. Fix them (options from Dask's configuration, distributed.worker.preload-argv, "
        "reach only the worker; `dask worker` checks its own command line). See %s",
        worker.address,
        error,
        troubleshooting("dask-worker-refuses-to-start"),
    )
    STATE.worker_pin = state
    return state


async def _claim_slot(worker, state: WorkerPin, cores: int) -> None:
    """Lease a slot of ``cores`` physical cores by policy; set ``state``'s lease and outcome.

    The claim runs off the event loop (:func:`~pinbackend.host.lifecycle.lease_slot`: the
    one decision, for one worker with its group, this cluster's workers on this host).
    """
    options, scheduler = state.options, worker.scheduler.address
    is_sibling = _sibling(scheduler)
    claim = functools.partial(
        lease_slot,
        cores,
        options,
        command=member_command(worker.address, scheduler),
        members=is_sibling,
    )
    loop = asyncio.get_running_loop()
    refused_by = None
    try:
        state.lease = await loop.run_in_executor(None, claim)
    except ClaimFailed as error:
        refused_by = error.policy  # the policy decided; the note below says why
    if state.lease is not None and not state.lease.info.shared:
        return
    look = functools.partial(survey, options, nested=False, group=is_sibling)
    view = await loop.run_in_executor(None, look)
    room = group_room(view, cores)
    usable = view.usable
    fit = room.free if state.lease is None else max(room.free, 1)
    shape = host_shape(
        fit, state.nthreads, view.topology.count_cores(usable), format_cpu_list(usable)
    )
    strangers = view.other_jobs
    if strangers:
        held_by = view.holders(strangers, jobs_only=True)
        shape += f"; other jobs hold CPUs {format_cpu_list(strangers)} ({held_by})"
    if state.lease is not None:
        state.outcome = "shared"
        state.note = f"{shape}; the workers beyond them share cores (oversubscribe='share')"
        tell_host(
            worker,
            state,
            view,
            is_sibling,
            "expect workers on shared cores to slow "
            "each other down; start fewer workers here to avoid it",
        )
    elif refused_by == "error":
        state.outcome = "refused"
        state.note = f"{shape}; the workers beyond them are refused (oversubscribe='error')"
        logger.error(
            "pinbackend: Dask worker %s refuses to start: %s. Start fewer workers here, or "
            "pass oversubscribe='clamp' or 'share'. See %s",
            worker.address,
            state.note,
            troubleshooting("dask-worker-refuses-to-start"),
        )
    else:
        state.outcome = "closed"
        state.note = f"{shape}; the workers beyond them are closed (oversubscribe={refused_by!r})"
        tell_host(
            worker,
            state,
            view,
            is_sibling,
            "start at most that many workers of "
            "this size here, or pass oversubscribe='share' to run them on shared cores",
        )


def _abandon(state: WorkerPin) -> None:
    """Give back what a failed attempt took, through the one release: its lease, and its
    slot undone (a slot that failed to apply has put itself back already).

    A worker that only lacks CPU affinity keeps its slot and caps under fail=open; this is
    for every other failure, and for any failure under fail=closed.
    """
    applied, lease = state.slot, state.lease
    state.lease, state.slot = None, None
    try:
        release_slot(applied, lease)
    except (PinningError, OSError):
        pass  # the lease is given back; a thread that kept the slot's CPUs only runs slower


def unpin_worker(worker, source: str) -> None:
    """Undo what :func:`pin_worker` did for ``source``: the executors' caps, then the one
    release (:func:`~pinbackend.host.lifecycle.release_slot`: every thread's CPUs, the
    pools' caps, the environment and ``os.cpu_count`` as they were, the lease given back).
    A no-op for another source's pinning."""
    state = STATE.worker_pin
    if state is None or state.source != source:
        return
    STATE.worker_pin = None
    if state.task_caps is not None:
        state.task_caps.uninstall()
    try:
        release_slot(state.slot, state.lease)
    except (PinningError, OSError) as error:
        logger.warning(
            "pinbackend: could not give worker %s its CPUs back after releasing its slot: "
            "%s. See %s",
            worker.address,
            error,
            troubleshooting("dask-worker-cpus-not-restored"),
        )


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
