"""joblib backend ``"pinned"``: loky's process pool with a disjoint, capped core set per worker.

Everything loky gives joblib is kept (crash recovery, cloudpickle, memory-mapping of large
arrays, generators, timeouts, abort on error); this backend only plans the slots in the
parent and makes every new worker claim one and apply it before it runs any task.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import sys
import time

import joblib
from joblib._parallel_backends import FallbackToBackend, LokyBackend, SequentialBackend
from joblib.executor import get_memmapping_executor

from . import _platform
from .core.cpuset import format_cpu_list
from .core.planner import PlanError
from .host import notices
from .host.fair import ShareRequest
from .host.lifecycle import decide_waiting, grow_room, pool_from, report_decision
from .host.options import IDLE_WORKER_TIMEOUT, INNER_MAX_NUM_THREADS, PinOptions, reject_unknown
from .host.patches import Patch
from .host.policy import Request, decide
from .host.pool import PoolPlan
from .host.slot import OWN_PROCESS_HOOKS, in_slot
from .host.view import HostView, survey
from .host.worker import SlotHold, hold_slot, join_pool, task_in_slot
from .joblib_nested import share_caps_with_nested_loky
from .joblib_threading import PinnedThreadingBackend, RunThrough

__all__ = ["PinnedBackend", "shutdown_workers"]

# A slot applied in a process of its own (a pool worker of ours, a Dask worker) makes the loky
# pools that process starts share the slot's thread caps (undone with the slot).
if share_caps_with_nested_loky not in OWN_PROCESS_HOOKS:
    OWN_PROCESS_HOOKS.append(share_caps_with_nested_loky)
# Warnings about a Parallel call point at the user's line, past joblib's frames.
notices.skip_frames_of(joblib)

#: Keywords joblib itself hands a backend (``Parallel``/``parallel_config`` arguments that
#: loky's executor takes); with our options, the only ones accepted.
_JOBLIB_KEYWORDS = frozenset(
    {
        "context",
        "idle_worker_timeout",
        "inner_max_num_threads",
        "max_nbytes",
        "mmap_mode",
        "prefer",
        "prewarm",
        "require",
        "temp_folder",
        "timeout",
        "verbose",
    }
)
_OPTION_NAMES = frozenset(PinOptions.names("joblib"))


class _TaskInSlot(RunThrough):
    """A task run through :func:`~pinbackend.host.worker.task_in_slot`, pickled so that
    the worker claims its slot back (:class:`~pinbackend.host.worker.SlotHold`) before
    it unpickles the task's arguments, which may be large, on cores it no longer holds."""

    __slots__ = ()

    def __reduce__(self):
        return (_task_in_slot, (SlotHold(), self.run, self.func))


def _task_in_slot(_held, run, func) -> _TaskInSlot:
    return _TaskInSlot(run, func)


def _start_worker(pool: PoolPlan) -> None:
    """loky initializer: claim a slot of ``pool``, pin every thread and cap every pool.

    A failed claim does not end the worker (loky would report a crash and hide why): it is
    kept, and the worker's tasks raise it in the caller
    (:func:`~pinbackend.host.worker.task_in_slot`). The worker gives its lease back
    while idle, so that other jobs can have its cores.
    """
    try:
        join_pool(pool, yield_when_idle=True)
    except Exception:
        pass  # kept in STATE.claim_error by join_pool
    else:
        _hold_slot_as_tasks_arrive(sys._getframe(1))


#: A message this large waiting in the call queue's pipe is a task (loky's shutdown sentinel
#: is 8 bytes a worker), whose reading is worth waiting for a slot first.
_LARGE_MESSAGE = 32 * 1024
#: How often, at most, a clamped pool looks whether it can grow back (at task boundaries).
GROW_CHECK_SECONDS = 0.25


def _hold_slot_as_tasks_arrive(frame) -> Patch | None:
    """Make this loky worker take its slot back as soon as a task arrives, before it reads it.

    loky's worker loop (``_process_worker``, the initializer's caller) waits on its call
    queue with ``poll(timeout)`` and then reads the whole pickled task, arguments included,
    from a pipe: 0.18 s of CPU for a 100 MB argument, on cores a released worker no longer
    holds. The queue's ``poll`` (an instance attribute that the multiprocessing queue sets
    itself) is wrapped to hold a slot when it says a message is there: one free at once, or,
    when the pipe holds a large message (a task, never the shutdown sentinel, whose reading
    must not wait), one that frees up within the claim timeout. With another loky, or an
    executor without an idle timeout (which reads without polling), the worker still holds
    its slot before it unpickles the arguments (:class:`_TaskInSlot`). Returns the patch,
    installed for the worker's life (None where there is no queue to wrap).
    """
    while frame is not None and frame.f_code.co_name != "_process_worker":
        frame = frame.f_back
    queue = frame.f_locals.get("call_queue") if frame is not None else None
    poll = getattr(queue, "_poll", None)
    reader = getattr(queue, "_reader", None)
    if poll is None or reader is None:
        return None
    return Patch(queue, "_poll", lambda poll: _holding_slot(poll, reader)).install()


def _holding_slot(poll, reader):
    """``poll``, holding a slot when it says a message is there (see above)."""

    def poll_then_hold(*timeout):
        ready = poll(*timeout)
        if ready:
            hold_slot(wait=False)
            if _platform.bytes_waiting(reader) >= _LARGE_MESSAGE:
                hold_slot(wait=True)  # nothing if it holds one already
        return ready

    return poll_then_hold


class PinnedBackend(LokyBackend):
    """Process pool where each worker owns a disjoint core set and caps its threads to it.

    Options (through ``parallel_config``/``parallel_backend``/``Parallel`` keyword
    arguments), those of :class:`~pinbackend.host.options.PinOptions`:
    ``cores_per_worker`` (physical cores per worker; default: share all free cores),
    ``reserve`` (CPUs never used, a list or a string like ``"0,8-9"``), ``oversubscribe``
    (what to do with more workers than free cores: ``"clamp"``, the default, runs as many as
    fit with one warning per process, and waits up to the claim timeout when none is free;
    ``"error"`` refuses at once; ``"share"`` shares core sets with a warning; ``"wait"``
    waits, without a time limit, until every worker fits; inside pinned workers it is always
    ``"clamp"``, so nested calls never exceed their worker's cores), ``claim_timeout``
    (seconds a worker, or a pool on a busy host, waits for cores). An unknown keyword raises
    ``TypeError`` naming the closest valid one.
    """

    #: As with loky: ``n_jobs=None`` runs inline unless the enclosing ``parallel_config`` or
    #: ``parallel_backend`` gives ``n_jobs``.
    default_n_jobs = 1
    supports_inner_max_num_threads = True
    #: Calls that need shared memory or prefer threads run on pinned threads
    #: (:class:`~pinbackend.joblib_threading.PinnedThreadingBackend`), not joblib's plain ones.
    supports_sharedmem = True
    supports_retrieve_callback = True

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **keywords,
    ):
        """``nesting_level`` and ``inner_max_num_threads`` as joblib passes them; the
        options joblib's front door takes (:meth:`PinOptions.declared`), and joblib's own
        keywords (loky's executor's)."""
        reject_unknown(keywords, _OPTION_NAMES | _JOBLIB_KEYWORDS, "the pinned backend")
        options = PinOptions.take(keywords, "joblib")
        IDLE_WORKER_TIMEOUT.validate(keywords.get("idle_worker_timeout"))
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **keywords,
        )
        self.options = PinOptions(**options)
        self._fits: PinOptions | None = None  # the options an inline call last checked
        self._pool: PoolPlan | None = None
        self._next_grow_check = 0.0
        self._share = ShareRequest()  # the running call's, while it waited for cores

    @property
    def inner_max_num_threads(self) -> int | None:
        """Cap on each worker's threads; never above its slot size (checked when set)."""
        return self._inner_max_num_threads

    @inner_max_num_threads.setter
    def inner_max_num_threads(self, value: int | None) -> None:
        # parallel_config sets this attribute after construction: validate here.
        self._inner_max_num_threads = INNER_MAX_NUM_THREADS.validate(value)

    @property
    def policy(self) -> str:
        """The oversubscription policy in force here (see the class docstring)."""
        return self.options.policy("clamp")

    def effective_n_jobs(self, n_jobs):
        """Workers for ``n_jobs``: negative values count back from the free physical cores,
        a larger count than the free cores is clamped (policy ``clamp``)."""
        return self._sizing(n_jobs)[1]

    def _sizing(self, n_jobs) -> tuple[int | None, int]:
        """(workers to ask the policy for, ``n_jobs`` to report to joblib) for ``n_jobs``.

        The first is None where joblib runs the call inline.
        """
        if n_jobs == 0:
            # joblib's own wording first: its test suite (test_invalid_njobs) matches on it.
            raise ValueError(
                f"n_jobs == 0 in Parallel has no meaning; got n_jobs={n_jobs!r}. Use a "
                "positive int (that many workers), -1 (all free cores), -2 (all free cores "
                "but one, and so on) or None (the enclosing parallel_config's n_jobs, else 1)"
            )
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 1:
            self._refuse_slots_that_never_fit()
        if n_jobs == 1 or mp.current_process().daemon:
            return None, 1  # inline, as joblib does (and daemons cannot have children)
        if not (self.in_main_thread() or self.nesting_level == 0):
            return None, 1  # no fork below threads (as loky decides)
        view = self._view()
        size = self.options.cores_per_worker or 1
        fit = view.topology.count_cores(view.free) // size
        requested = n_jobs
        if n_jobs == -1:  # as many as fit: the free cores, and others' as they free up
            requested = None
        elif n_jobs < 0:  # counts back from the free cores; none free: as many as free up
            requested = max(fit + 1 + n_jobs, 1) if fit else None
        return requested, self._reported(self._expected(view, requested))

    def _expected(self, view: HostView, requested: int | None) -> int:
        """How many workers the policy would run now for ``requested`` (what joblib is
        told: it batches by it). Where the policy refuses, ``configure`` raises it."""
        expected = requested if requested is not None else 1
        try:
            decision = decide(view, self.options, Request("Parallel", workers=requested))
        except PlanError:
            return expected
        if decision.plan is not None:
            return decision.plan.n_workers
        return 1 if decision.bounded else expected  # waits for a core, or for all of them

    def _refuse_slots_that_never_fit(self) -> None:
        """Raise, as ``n_jobs=2`` would, where no worker could ever have its slot
        (``cores_per_worker`` beyond the job's cores or its CPU budget, ``reserve`` naming
        CPUs this machine lacks or every one it has), although an inline call uses none:
        whatever the policy, waiting cannot help, and the mistake should not wait for the
        first call with more workers. The policy's own rule decides (one survey with no
        other job's leases counted); checked once per set of options."""
        options = self.options
        if options == self._fits or in_slot():
            return
        if options.cores_per_worker is not None or options.reserve:
            nobody_else = dataclasses.replace(survey(options), leases=(), budget_used=frozenset())
            decide(nobody_else, options, Request("Parallel(n_jobs=1)", workers=1))
        self._fits = options

    def _view(self) -> HostView:
        """What a new pool of this process may use now (one survey of the host)."""
        return survey(self.options)

    @staticmethod
    def _reported(workers: int) -> int:
        """What joblib is told for ``workers``: never 1 outside a slot, where joblib would
        run the call inline in the caller, unpinned and without a lease (another job could
        then be handed the same CPUs); one leased, pinned worker runs it instead."""
        return 2 if workers == 1 and not in_slot() else workers

    def configure(
        self,
        n_jobs=1,
        parallel=None,
        prefer=None,
        require=None,
        idle_worker_timeout=None,
        **executor_kwargs,
    ):
        """Decide the pool's slots by policy and start (or reuse) loky workers that claim them.

        ``n_jobs=1`` (and ``None`` outside a context that sets ``n_jobs``) runs inline in the
        caller, as with every joblib backend; the caller is never pinned. Otherwise the
        policy decides (clamp, wait, share or error; see the class docstring); a single
        worker still runs in its own pinned, leased process.
        """
        reject_unknown(executor_kwargs, _OPTION_NAMES | _JOBLIB_KEYWORDS, "the pinned backend")
        # Parallel(backend="pinned", reserve=...) passes our options here, not to __init__.
        self.options = self.options.updated(**PinOptions.take(executor_kwargs, "joblib"))
        if "inner_max_num_threads" in executor_kwargs:
            # joblib hands it on to loky's executor, which ignores it: apply it ourselves.
            self.inner_max_num_threads = executor_kwargs.pop("inner_max_num_threads")
        if require == "sharedmem" or prefer == "threads":
            raise FallbackToBackend(
                PinnedThreadingBackend(
                    nesting_level=self.nesting_level,
                    options=self.options,
                    sizing=self._sizing,
                    user_cap=self.inner_max_num_threads,
                )
            )
        requested, reported = self._sizing(n_jobs)
        if reported == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        executor_kwargs = {**self.backend_kwargs, **executor_kwargs}
        if "timeout" in executor_kwargs:
            raise ValueError(
                "the 'timeout' parameter is not supported by the pinned backend (as with "
                "loky); use idle_worker_timeout for idle workers, or Parallel(timeout=...)"
            )
        idle = executor_kwargs.pop("idle_worker_timeout", 300)
        if idle_worker_timeout is not None:
            idle = idle_worker_timeout
        IDLE_WORKER_TIMEOUT.validate(idle)
        what = f"Parallel(n_jobs={n_jobs})"
        self._share.end()
        decision, view = decide_waiting(
            self._view, self.options, Request(what, workers=requested), on_wait=self._share.ask
        )
        report_decision(decision, what)
        workers = decision.plan.n_workers
        if workers == 1 and in_slot():
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._pool = pool_from(decision, view, self.options, self.inner_max_num_threads)
        self._workers = get_memmapping_executor(
            workers,
            timeout=idle,
            env=self._pool.worker_env(),
            context_id=parallel._id,
            initializer=_start_worker,
            initargs=(self._pool,),
            **executor_kwargs,
        )
        self.parallel = parallel
        return self._reported(workers)

    def stop_call(self):
        """The call ended: its fair-share request ends with it."""
        self._share.end()
        super().stop_call()

    def terminate(self):
        """The call ended (or was aborted): its fair-share request ends with it."""
        self._share.end()
        super().terminate()

    def submit(self, func, callback=None):
        """Schedule ``func`` on a worker; it raises there why the worker has no slot.

        A pool clamped by other jobs' cores grows back here, at task boundaries: once a
        slot it could not have is free (:func:`~pinbackend.host.lifecycle.grow_room`,
        looked at every :data:`GROW_CHECK_SECONDS` at most), loky's executor gets one more
        worker, which claims that slot before its first task."""
        self._grow_back()
        return super().submit(_TaskInSlot(task_in_slot, func), callback=callback)

    def _grow_back(self) -> None:
        pool, executor = self._pool, getattr(self, "_workers", None)
        if pool is None or not pool.grow or executor is None:
            return
        now = time.monotonic()
        if now < self._next_grow_check:
            return
        self._next_grow_check = now + GROW_CHECK_SECONDS
        target = pool.n_workers + grow_room(pool)
        if target > executor._max_workers:
            # loky's executor starts workers up to _max_workers at its next submit
            # (_ensure_executor_running); growing needs no wait for running tasks, unlike
            # its public resize, which waits for every pending one.
            executor._max_workers = target

    def get_nested_backend(self):
        """Nested calls subdivide the worker's own slot (workers import pinbackend)."""
        nested = PinnedBackend(
            nesting_level=(self.nesting_level or 0) + 1,
            inner_max_num_threads=self.inner_max_num_threads,
            **self.options.keywords("joblib", nested=True),
        )
        return nested, None

    def __repr__(self) -> str:
        options = [f"oversubscribe={self.policy!r}"]
        if self.options.cores_per_worker:
            options.append(f"cores_per_worker={self.options.cores_per_worker}")
        if self.options.reserve:
            options.append(f"reserve={format_cpu_list(self.options.reserve)!r}")
        return f"PinnedBackend({', '.join(options)})"


def shutdown_workers() -> None:
    """Stop joblib's reusable worker processes now, releasing their core leases."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
