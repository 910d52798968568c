"""Cap thread pools inside every Dask task thread, not only in the worker's main thread.

OpenMP's thread count is an ICV of the calling thread (libgomp, libomp): a cap set from the
worker's event loop does not reach the executor threads that run tasks, and those threads
come and go (``secede``/``rejoin`` start new ones). distributed's ``ThreadPoolExecutor``
takes no ``initializer``, so each executor's ``submit`` is wrapped instead (a
:class:`~pinbackend.host.patches.Patch` on the executor object, undone when the worker is
unpinned): the first task a thread runs applies the caps in that thread, later tasks only
test a thread-local flag.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import Any

from distributed.threadpoolexecutor import ThreadPoolExecutor as DaskThreadPoolExecutor

from ..host.caps import cap_threads
from ..host.patches import Patch

__all__ = ["TaskThreadCaps"]

# distributed's executor subclasses its own vendored copy of the standard thread pool, not
# concurrent.futures.ThreadPoolExecutor (the one its offload executor and users' are).
_THREAD_POOLS = (concurrent.futures.ThreadPoolExecutor, DaskThreadPoolExecutor)


class TaskThreadCaps:
    """Wraps executors so that each of their threads caps its pools to ``threads``."""

    def __init__(self, threads: int):
        self.threads = threads
        self._local = threading.local()
        self._patches: list[Patch] = []

    def install(self, executors: Iterable[concurrent.futures.Executor]) -> None:
        """Wrap the ``submit`` of every thread-pool executor given (process pools run
        elsewhere and inherit the worker's environment instead)."""
        for executor in executors:
            if not isinstance(executor, _THREAD_POOLS):
                continue
            if any(patch.target is executor for patch in self._patches):
                continue  # already wrapped (one executor can appear under two names)
            self._patches.append(Patch(executor, "submit", self._capping).install())

    def _capping(self, submit: Callable) -> Callable:
        def capped_submit(fn: Callable, /, *args: Any, **kwargs: Any):
            return submit(self._run_capped, fn, *args, **kwargs)

        return capped_submit

    def uninstall(self) -> None:
        """Give every wrapped executor its own ``submit`` back."""
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def _run_capped(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._local, "capped", False) is False:
            cap_threads(self.threads)
            self._local.capped = True
        return fn(*args, **kwargs)
