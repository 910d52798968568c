"""A process pool whose worker cannot claim its slot stops, and the caller gets the error.

``multiprocessing.Pool`` replaces a worker whose initializer raised, without limit (821
crashed workers in 10 s measured, and ``map`` never returned): when no slot frees up within
the claim timeout, or the lease registry is refused, every replacement fails the same way.
So a worker reports its claim error before it exits, through a queue that the pool's
parent made and passed with the initializer's arguments (:class:`ClaimErrors`), and:

- a ``Pool`` gets a ``Process`` factory of its own (:func:`guard_process_factory`; the pool's
  worker handler takes the factory from the pool instance). Once a worker has reported, the
  factory starts no process any more: a :class:`StandIn` thread takes the failed worker's
  place and answers every task with the error through the pool's own result queue, exactly
  as a worker whose task raised it would. ``map``, ``apply``, ``imap`` and the rest raise it
  in the caller (tasks submitted later too), and ``close``/``join``/``terminate`` work as
  usual; nothing of the pool's bookkeeping is touched.
- a ``ProcessPoolExecutor`` already breaks when a worker ends; its manager thread's
  ``terminate_broken`` is wrapped (:func:`wrap_terminate_broken`) so that the pending futures
  get the claim error itself instead of a ``BrokenProcessPool`` without a cause.

The error travels as itself (same class, message and attributes), with the worker's
traceback as its ``__cause__``, as ``multiprocessing`` reports a task's exception.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import threading
import traceback
from multiprocessing.pool import RemoteTraceback

from ..host.state import STATE

__all__ = [
    "ClaimErrors",
    "StandIn",
    "guard_process_factory",
    "watch_executor",
    "wrap_terminate_broken",
]

# How often a stand-in looks up from a blocking wait to see whether its pool terminated it.
_POLL_SECONDS = 0.1


class ClaimErrors:
    """The channel from a pool's workers to its parent: the errors of failed claims.

    Made in the parent with the pool's own multiprocessing context; workers call
    :meth:`report`, the parent's pool machinery :meth:`first` (one reader thread at a time:
    the pool's worker handler, or the executor's manager thread).
    """

    def __init__(self, context):
        self._queue = context.SimpleQueue()
        self._first: BaseException | None = None

    def __getstate__(self):
        # Only the queue travels to spawned workers; what the parent read stays there.
        return self._queue

    def __setstate__(self, queue) -> None:
        self._queue = queue
        self._first = None

    def report(self, error: BaseException) -> None:
        """In a worker: send ``error`` (with its traceback) to the parent; never raises."""
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        # The form multiprocessing gives a task's traceback (ExceptionWithTraceback).
        remote = '\n"""\n' + "".join(lines) + '"""'
        try:
            self._queue.put(PortableError(error, remote))
        except Exception:
            try:  # the error's own attributes did not pickle: send its text alone
                self._queue.put(PortableError(RuntimeError(f"{error!r}"), remote))
            except Exception:
                pass  # the pool then behaves as without the runner's guard

    def first(self) -> BaseException | None:
        """The first error any worker reported so far, or None.

        Reads every report waiting, so that workers blocked on a full pipe can exit.
        """
        try:
            while not self._queue.empty():
                error = self._queue.get()
                if self._first is None:
                    self._first = error
        except Exception:
            pass  # a closed or broken queue: keep what was read
        return self._first


class PortableError:
    """An exception that unpickles as itself, whatever its ``__init__`` takes.

    Exceptions pickle as ``type(*args)``, which fails for classes whose ``__init__`` takes
    more than the message (``LeaseConflict``): this one rebuilds from the class, ``args`` and
    attributes instead, with a ``RemoteTraceback(remote_traceback)`` as its ``__cause__``.
    """

    __slots__ = ("error", "remote_traceback")

    def __init__(self, error: BaseException, remote_traceback: str):
        self.error = error
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        cls = type(self.error)
        return _rebuild_error, (
            cls.__module__,
            cls.__qualname__,
            self.error.args,
            dict(vars(self.error)),
            self.remote_traceback,
            f"{cls.__name__}: {self.error}",
        )


def _rebuild_error(module, qualname, args, attributes, remote_traceback, text) -> BaseException:
    # Runs inside unpickling (in the pool's result thread too): it must never raise.
    try:
        cls = importlib.import_module(module)
        for name in qualname.split("."):
            cls = getattr(cls, name)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"{module}.{qualname} is not an exception class")
        error = cls.__new__(cls, *args)
        error.args = args
        error.__dict__.update(attributes)
    except Exception:
        error = RuntimeError(text)
    error.__cause__ = RemoteTraceback(remote_traceback)
    return error


def _portable(error: BaseException) -> PortableError:
    """``error`` (as :class:`ClaimErrors` rebuilt it) ready to be pickled again."""
    remote = getattr(error.__cause__, "tb", None) or f"{type(error).__name__}: {error}"
    return PortableError(error, remote)


class StandIn(threading.Thread):
    """Takes a failed worker's place in a ``Pool``: answers every task with the claim error.

    It looks like a worker process to the pool (``exitcode``, ``join``, ``terminate``), but is
    a thread of the parent that starts nothing. Once it has the task queue's read lock it
    keeps it, so workers that did claim their slot take no new task either (they compete for
    the lock between their tasks, and may win it a few times first: the lock is not fair).
    It ends on the pool's stop sentinel (``None``, sent by ``close``/``terminate``) or when
    the pool terminates it.
    """

    #: Not a process: no pid that code could signal.
    pid = None

    def __init__(self, error: BaseException, inqueue, outqueue):
        super().__init__(name="pinbackend-failed-worker", daemon=True)
        self._answer = (False, _portable(error))
        self._inqueue = inqueue
        self._outqueue = outqueue
        self._stopped = threading.Event()

    @property
    def exitcode(self) -> int | None:
        """None while it answers tasks, 0 once it ended (as a worker that exited cleanly)."""
        return None if self.is_alive() else 0

    def is_alive(self) -> bool:
        """Whether it still answers tasks (a terminated stand-in no longer counts)."""
        return not self._stopped.is_set() and super().is_alive()

    def terminate(self) -> None:
        """Stop answering (within :data:`_POLL_SECONDS`)."""
        self._stopped.set()

    kill = terminate

    def run(self) -> None:
        lock = self._inqueue._rlock
        while not self._stopped.is_set():
            if not lock.acquire(timeout=_POLL_SECONDS):
                continue
            try:
                if self._answer_tasks():
                    return
            except (OSError, EOFError):
                return  # the pool's queues are closed: nothing left to answer
            finally:
                lock.release()

    def _answer_tasks(self) -> bool:
        """Answer tasks until stopped; True once the pool's stop sentinel arrived."""
        reader = self._inqueue._reader
        while not self._stopped.is_set():
            if not reader.poll(_POLL_SECONDS):
                continue
            try:
                task = reader.recv()
            except (OSError, EOFError):
                raise
            except Exception:
                continue  # a task that does not unpickle here has no job to answer
            if task is None:
                return True
            job, index = task[:2]
            self._outqueue.put((job, index, self._answer))
        return False


def guard_process_factory(process_factory, errors: ClaimErrors):
    """A ``Pool.Process`` replacement: real workers until one reported, then stand-ins.

    ``Pool`` calls it as ``Process(ctx, target=worker, args=(inqueue, outqueue, ...))`` for
    its first workers and for every replacement (Python 3.10 to 3.13 alike).
    """

    def Process(ctx, *args, **kwds):
        error = errors.first()
        queues = tuple(kwds.get("args", ()))[:2]
        if error is None or len(queues) != 2:
            return process_factory(ctx, *args, **kwds)
        return StandIn(error, *queues)

    return Process


def watch_executor(executor, errors: ClaimErrors) -> None:
    """Let ``executor``'s manager thread find ``errors`` when a worker ends."""
    with STATE.lock:
        STATE.claim_channels[executor] = errors


def _take_pending(manager) -> list:
    """Remove and return the work items a broken executor still owes."""
    with manager.shutdown_lock:  # submit() adds work items under this lock
        items = list(manager.pending_work_items.values())
        manager.pending_work_items.clear()
    return items


def _fail(items, error: BaseException) -> None:
    """Set ``error`` on the futures of ``items`` (not on those cancelled meanwhile)."""
    for item in items:
        try:
            item.future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile


def wrap_terminate_broken(original):
    """Wrap ``_ExecutorManagerThread.terminate_broken``: a claim error fails the futures.

    The executor still breaks as it always does (workers terminated, ``submit`` refused),
    but the futures it owes get the claim error itself instead of a ``BrokenProcessPool``,
    and ``submit``'s ``BrokenProcessPool`` names it. They are failed last, so that a caller
    woken by them finds the executor fully broken. Without a claim error (a worker crashed
    otherwise, or not a runner executor) nothing changes.
    """

    @functools.wraps(original)
    def terminate_broken(self, cause):
        executor = self.executor_reference()
        with STATE.lock:
            errors = STATE.claim_channels.get(executor) if executor is not None else None
        error = errors.first() if errors is not None else None
        owed = _take_pending(self) if error is not None else []
        try:
            original(self, cause)
        finally:
            if error is not None:
                if executor is not None:
                    executor._broken = (
                        f"a worker could not claim its cores ({type(error).__name__}: "
                        f"{error}); the process pool is not usable anymore"
                    )
                _fail(owed, error)

    return terminate_broken
