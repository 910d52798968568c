"""The user's main process: capped only when ``--threads`` asks, pinned only with ``--pin-main``.

Environment variables would cap libraries before they load, but changing ``os.environ``
would leak into every program the script starts. So the cap is applied at run time: now
for the libraries already loaded, and again whenever an extension-module import brings in
a BLAS or OpenMP library. Which libraries are mapped is read from ``/proc/self/maps`` after
each extension-module import (:mod:`pinbackend.host.loads`), never from the loader under its
lock: about 1.5 ms per extension module, about 0.3 s on importing numpy, SciPy and
scikit-learn, paid only with ``--threads`` or ``--pin-main``.
"""

from __future__ import annotations

import os
import sys
import threading

from .. import _platform
from ..core.cpuset import format_cpu_list
from ..core.planner import PlanError
from ..host import loads
from ..host.caps import cap_threads
from ..host.pinning import pin_or_warn
from ..host.state import STATE
from ._config import RunnerConfig

__all__ = ["LibraryWatch", "prepare_main_process"]

# File-name prefixes of the libraries threadpoolctl controls (its controllers' lists).
_POOL_LIBRARY_PREFIXES = (
    "libopenblas",
    "libscipy_openblas",
    "libblas",
    "libblis",
    "libmkl_rt",
    "mkl_rt",
    "libflexiblas",
    "libgomp",
    "libomp",
    "libiomp",
    "vcomp",
    "libtbb",
)
# Python-level pools that host.caps also caps, noticed when their modules appear.
_POOL_MODULES = ("numba", "numexpr", "tbb")


class LibraryWatch:
    """Re-apply a BLAS/OpenMP cap each time an import loads a new thread-pool library.

    The one installed in this process is ``STATE.library_watch``.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self._seen = _platform.loaded_libraries() or frozenset()
        self._modules = self._pool_modules()
        self._lock = threading.Lock()

    @staticmethod
    def _pool_modules() -> frozenset[str]:
        return frozenset(name for name in _POOL_MODULES if name in sys.modules)

    def check(self) -> None:
        """Cap again (every kind :mod:`pinbackend.host.caps` knows) if a thread-pool library
        or module has loaded since the last check."""
        loaded = _platform.loaded_libraries()
        modules = self._pool_modules()
        with self._lock:
            new_modules, self._modules = modules - self._modules, modules
            if loaded is not None and not new_modules:
                new, self._seen = loaded - self._seen, loaded
                if not any(os.path.basename(p).startswith(_POOL_LIBRARY_PREFIXES) for p in new):
                    return
        cap_threads(self.threads)

    def install(self) -> None:
        """Check after every extension-module import (where shared libraries get loaded),
        before the pinned thread pools' own process-wide cap lowers what this one set."""
        if STATE.library_watch is not None:
            STATE.library_watch.uninstall()
        loads.watch_extension_loads()
        loads.add_listener(self.check, first=True)
        STATE.library_watch = self

    def uninstall(self) -> None:
        """Stop checking."""
        loads.remove_listener(self.check)
        if STATE.library_watch is self:
            STATE.library_watch = None


def prepare_main_process(config: RunnerConfig, job_cpus: frozenset[int]) -> list[str]:
    """Apply ``--pin-main`` and ``--threads`` to this process; return what was done.

    ``job_cpus`` are the CPUs the job may use now. ``--pin-main`` pins every thread to them
    (no lease is taken: the job's pools claim those cores for their workers) and, unless
    ``--threads`` says otherwise, caps the thread pools to their number, as ``run`` does.
    """
    done = []
    threads = config.threads
    if config.pin_main:
        if not job_cpus:
            raise PlanError(
                "--pin-main: the job has no free CPU to pin the main process to (other jobs "
                "hold them, or --cores/--reserve exclude them); see python -m pinbackend status"
            )
        if pin_or_warn(job_cpus):
            done.append(f"main process pinned to CPUs {format_cpu_list(job_cpus)}")
        threads = threads or len(job_cpus)
    if threads is not None:
        STATE.main_cap = threads
        kinds = cap_threads(threads)
        LibraryWatch(threads).install()
        done.append(f"main process thread pools capped to {threads} ({', '.join(kinds)})")
    return done
