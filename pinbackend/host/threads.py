"""Pinned thread pools: N threads, each on its own disjoint share of the caller's cores.

Threads avoid process start-up, pickling and copies, and most numpy, scipy and scikit-learn
kernels release the GIL; but threads that all float over every core, each with a BLAS and an
OpenMP pool sized to the whole machine, oversubscribe it as badly as processes do. Here:

- the shares come from the same lifecycle as process pools: in a pinned worker, its own slot
  subdivided; in a user's process, cores leased (through the same leases as everything
  else) for as long as the pool lives;
- each pool thread pins itself (``sched_setaffinity`` acts on the calling thread) and caps
  its own OpenMP teams and, where the library allows it, its BLAS (threadpoolctl's
  thread-local limits);
- a BLAS with one process-wide pool (OpenBLAS built with pthreads) is capped process-wide
  to the smallest share while the pool lives, and restored after, under the lock that
  serializes every threadpoolctl call (threadpoolctl is not thread-safe);
- the caller's own mask and caps are untouched: only the pool's threads were pinned;
- while one task alone runs, its process-wide BLAS pool may widen onto the idle threads'
  shares, and is narrowed again before another task starts (:mod:`.thread_lending`).

Every piece of shared state is guarded by a lock or is a thread-safe queue, so the pool is
correct without the GIL too (free-threaded CPython).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing.pool
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable

from threadpoolctl import ThreadpoolController

from .. import _platform
from . import loads
from .blas_cap import blas_cap
from .caps import _THREADPOOLCTL_LOCK, cap_openmp_in_this_thread
from .leases import Lease, LeaseConflict, claim
from .lifecycle import decide_waiting, report_decision
from .locks import call_when_unlocked
from .machine import read_topology
from .options import PinOptions
from .patches import Patch, Patches
from .policy import KEYWORDS, Request, Spelling, decide
from .slot import current_slot
from .state import STATE
from .thread_lending import ThreadLoans, may_lend_shares
from .view import HostView, host_view, survey

__all__ = [
    "PinnedThreadPool",
    "ThreadShares",
    "assign_threads",
    "assignments_queue",
    "enter_share",
    "hold_process_wide_cap",
    "plan_thread_shares",
    "run_capped",
]


@dataclasses.dataclass
class ThreadShares:
    """The cores of a thread pool, one share per thread, and the leases that hold them."""

    shares: tuple[frozenset[int], ...]
    leases: list[Lease] = dataclasses.field(default_factory=list)
    #: Whether the policy let threads share cores (``oversubscribe="share"``, or with others).
    shared: bool = False
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def release(self) -> None:
        """Give the leased cores back (idempotent, from any thread)."""
        # Taking the list and emptying it are two steps: without the GIL, two ends of one
        # pool releasing together both took it (about 1 in 750 tries of 8 threads, 3.13t).
        with self._lock:
            leases, self.leases = self.leases, []
        for lease in leases:
            lease.release()


def plan_thread_shares(
    n_threads: int | None,
    options: PinOptions,
    what: str,
    *,
    report: bool = True,
    view: Callable[[], HostView] | None = None,
    spelling: Spelling = KEYWORDS,
) -> ThreadShares:
    """Decide ``n_threads`` disjoint shares (None: one per free core), and lease them.

    Inside a pinned worker, the worker's slot is subdivided (its lease already holds the
    cores; at most one thread per core). Elsewhere the policy decides, as for process
    pools (clamp, wait, share, error), and the caller leases every share, all or nothing,
    deciding again if another job took a share between the decision and the claim.
    ``report`` says what the policy had to do (a caller that keeps its thread count says
    nothing); ``view`` reads what the process may use (default: :func:`survey`);
    ``spelling`` names the remedies in the caller's words.

    Unlike a process pool, a thread pool cannot reuse this process's own pool workers:
    their leases are in its way like any other job's (waited for, bounded by the claim
    timeout), never claimed over and over.
    """
    request = Request(what, workers=n_threads, spelling=spelling)
    if current_slot() is not None:
        inside = host_view(read_topology(), options, nested=True, me=os.getpid())
        plan = decide(inside, options, request).plan
        return ThreadShares(plan.slots, shared=plan.shared)
    read = view or (lambda: survey(options))

    def read_all_held() -> HostView:
        return dataclasses.replace(read(), me=None)  # own workers' leases count as held

    while True:
        decision, job = decide_waiting(read_all_held, options, request)
        if report:
            report_decision(decision, what)
        shared = decision.plan.shared or decision.shared_with_others
        shares = ThreadShares(decision.plan.slots, shared=shared)
        if shared:
            return shares  # sharing holds no lease, as for process pools
        try:
            for share in dict.fromkeys(shares.shares):
                shares.leases.append(claim(share, scope=job.scope, command=f"threads: {what}"))
        except LeaseConflict:
            shares.release()
            time.sleep(_RETRY_SECONDS)  # another process took a share meanwhile
            continue
        return shares


#: Pause before deciding again when another process took a share first.
_RETRY_SECONDS = 0.05


def assign_threads(shares: ThreadShares, n_threads: int | None) -> list[tuple[frozenset[int], int]]:
    """(cores, thread cap) for each of ``n_threads`` threads (None: one per share).

    More threads than shares (a pool sized for I/O, say) share the shares in turn; the
    threads on one share split its cores' thread caps, so that together they never run
    more BLAS/OpenMP threads than it has CPUs.
    """
    slots = shares.shares
    count = len(slots) if n_threads is None else n_threads
    per_share = [len(range(i, count, len(slots))) for i in range(len(slots))]
    return [
        (slots[i % len(slots)], max(len(slots[i % len(slots)]) // per_share[i % len(slots)], 1))
        for i in range(count)
    ]


def assignments_queue(assignments: list[tuple[frozenset[int], int]]) -> queue.SimpleQueue:
    """A thread-safe queue of assignments for pool threads to take as they start."""
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for assignment in assignments:
        pending.put(assignment)
    return pending


def hold_process_wide_cap(
    owner: object, n_threads: int, on_release: Callable[[], None], ends: tuple[str, ...] = ()
) -> None:
    """Cap process-wide BLAS pools to ``n_threads`` while ``owner`` (a thread pool made by
    code that knows nothing of pinbackend) lives: until one of its ``ends`` methods
    (``terminate``, ``join``, ``shutdown``) returns, or it is collected; then run
    ``on_release``, once.

    The ``ends`` methods are wrapped on ``owner`` itself (:class:`Patch`); the first that
    returns undoes the wraps, so the pool has its own methods back from then on.
    """
    cap = blas_cap()
    cap.enter(n_threads)
    done = threading.Lock()

    def release() -> bool:
        if not done.acquire(blocking=False):
            return False
        cap.leave(n_threads, restore_openmp_here=not in_pinned_thread())
        on_release()
        return True

    def ended() -> None:
        def release_and_unwrap() -> None:
            if release():
                wraps.undo()  # once, by the thread that released

        release_after_threads(_threads_of(owner), release_and_unwrap)

    wraps = Patches(
        f"ends of {type(owner).__name__}",
        [Patch(owner, end, lambda method: _then(method, ended)) for end in ends],
    ).install()
    # The collector may run this in a thread that holds one of our locks right now. (Only
    # release is kept by the finalizer: holding the wraps would keep the owner alive.)
    weakref.finalize(owner, call_when_unlocked, release)


#: How long ending a thread pool waits for its idle threads to exit (told to, they do at
#: once) before their cores are given back by a thread that waits for the rest.
_EXIT_GRACE_SECONDS = 0.5


def release_after_threads(threads: list[threading.Thread], release: Callable[[], None]) -> None:
    """Run ``release`` (give a thread pool's cores and caps back) once ``threads`` ended.

    multiprocessing's ``ThreadPool.terminate`` (and ``shutdown(wait=False)``) return while
    threads still run: an idle one exits a moment later, one running a task (a call aborted
    by another task's error) only when its task ends, and nothing can stop it sooner. Idle
    threads are waited for (up to :data:`_EXIT_GRACE_SECONDS`), so that a pool that ended
    normally has given its cores back when its end returns; threads known to run a task
    (:func:`run_capped`), or slower to exit, are waited for by a small daemon thread that
    releases after them: a thread never runs on cores its pool gave back.
    """
    me = threading.current_thread()
    threads = [thread for thread in threads if thread is not me]
    with STATE.running_lock:
        running = {thread for thread in threads if thread.ident in STATE.running_tasks}
    deadline = time.monotonic() + _EXIT_GRACE_SECONDS
    for thread in threads:
        if thread not in running:
            thread.join(max(deadline - time.monotonic(), 0.0))
    alive = [thread for thread in threads if thread.is_alive()]
    if not alive:
        release()
        return

    def release_later() -> None:
        for thread in alive:
            thread.join()
        release()

    threading.Thread(
        target=release_later, name="pinbackend-thread-pool-release", daemon=True
    ).start()


def _threads_of(pool: object) -> list[threading.Thread]:
    """The worker threads of a ``ThreadPool`` or a ``ThreadPoolExecutor``."""
    return list(getattr(pool, "_pool", None) or getattr(pool, "_threads", ()))


def _then(method: Callable, release: Callable[[], None]) -> Callable:
    """``method``, then ``release`` once it has returned (or raised)."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        finally:
            release()

    return call


_THIS_THREAD = threading.local()


def in_pinned_thread() -> bool:
    """Whether the calling thread is a thread of a pinned pool (it has its own caps)."""
    return getattr(_THIS_THREAD, "cap", None) is not None


def enter_share(
    pending: queue.SimpleQueue,
    initializer: Callable | None,
    initargs,
    loans: ThreadLoans | None = None,
) -> None:
    """Pool-thread initializer: take an assignment, pin this thread to its cores, cap its
    pools to its thread cap, then run the user's own initializer. ``loans``: the pool's
    lending (:mod:`.thread_lending`), told by :func:`run_capped` of each task."""
    share, cap = pending.get_nowait()
    _THIS_THREAD.share, _THIS_THREAD.loans = share, loans
    # Put it back: a pool that replaces a thread (maxtasksperchild) hands it on in turn.
    pending.put((share, cap))
    try:
        _platform.set_thread_affinity(0, share)
    except _platform.AffinityUnavailable:
        pass  # caps still apply; the pool's creator warned once (pin_or_warn)
    _cap_this_thread(cap)
    if initializer is not None:
        initializer(*initargs)


def _cap_this_thread(n_threads: int) -> None:
    loads.watch_extension_loads()
    _THIS_THREAD.cap = n_threads
    # Read before capping: a load that lands while we cap is seen at the next task.
    _THIS_THREAD.generation = loads.generation()
    cap_openmp_in_this_thread(n_threads)
    _cap_thread_local_blas(n_threads)


def run_capped(func: Callable[[], object]) -> object:
    """Run one task on a pinned pool thread, capping again first if an import loaded
    libraries since this thread last capped (limits reach only libraries already loaded,
    and an OpenMP runtime loaded later starts every thread at the process default).

    The test is one integer comparison (:func:`pinbackend.host.loads.generation`): it never
    asks the dynamic loader, whose lock must not be held while Python runs.
    """
    cap = getattr(_THIS_THREAD, "cap", None)
    if cap is not None and _THIS_THREAD.generation != loads.generation():
        _cap_this_thread(cap)
    # Known as running (STATE.running_tasks): a pool that ends keeps its cores until done.
    me = threading.get_ident()
    with STATE.running_lock:
        STATE.running_tasks.add(me)
    loans = getattr(_THIS_THREAD, "loans", None)
    try:
        if loans is not None:
            # Before the task runs: a loan of this thread's share is taken back first.
            loans.task_starts(_THIS_THREAD.share)
        try:
            return func()
        finally:
            if loans is not None:
                loans.task_ends()
    finally:
        with STATE.running_lock:
            STATE.running_tasks.discard(me)


def _cap_thread_local_blas(n_threads: int) -> None:
    """Cap the BLAS libraries whose limit is per thread (MKL, OpenBLAS on OpenMP)."""
    with _THREADPOOLCTL_LOCK:
        for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
            if getattr(lib, "threading_layer", None) != "pthreads":
                lib.set_num_threads(n_threads)


class PinnedThreadPool(multiprocessing.pool.ThreadPool):
    """A ``multiprocessing.pool.ThreadPool`` whose threads run on disjoint, capped shares.

    ``shares`` come from :func:`plan_thread_shares`; the pool releases their leases and
    restores process-wide BLAS caps when it is terminated (``terminate()``, ``with``, or
    ``close()`` + ``join()``). With ``lend``, a task that runs alone may widen its
    process-wide BLAS pool onto the idle threads' shares (:mod:`.thread_lending`; tasks
    must run through :func:`run_capped`).
    """

    def __init__(self, shares: ThreadShares, initializer=None, initargs=(), *, lend=False):
        self._thread_shares = shares
        assignments = assign_threads(shares, None)
        self._cap = min(cap for _, cap in assignments)
        self._blas_cap = blas_cap()
        self._blas_cap.enter(self._cap)
        self._ended = False
        self._end_lock = threading.Lock()
        self._loans = None
        try:
            if lend and not shares.shared and may_lend_shares(shares.shares):
                self._loans = ThreadLoans(shares.shares, self._blas_cap)
            super().__init__(
                len(assignments),
                enter_share,
                (assignments_queue(assignments), initializer, initargs, self._loans),
            )
        except BaseException:
            self._end()
            raise

    def _end(self) -> None:
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        try:
            if self._loans is not None:
                self._loans.close()
        finally:
            self._blas_cap.leave(self._cap, restore_openmp_here=not in_pinned_thread())
            self._thread_shares.release()

    def terminate(self) -> None:
        """Stop the threads, then give the cores and the process-wide caps back.

        A thread still running a task (a call aborted by another task's error: nothing can
        stop a running thread) keeps its cores until it ends: they are given back then,
        from a small thread that waits for it, never while it still runs on them (see
        :func:`release_after_threads`).
        """
        super().terminate()
        release_after_threads(list(self._pool), self._end)

    def join(self) -> None:
        """Wait for the threads (after ``close()``), then give the cores and caps back."""
        super().join()
        self._end()

    @property
    def shares(self) -> tuple[frozenset[int], ...]:
        """The cores of each thread."""
        return self._thread_shares.shares

    def __repr__(self) -> str:
        return f"PinnedThreadPool({len(self.shares)} threads, pid {os.getpid()})"
