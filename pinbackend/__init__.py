"""pinbackend: static multiprocessing for joblib, scikit-learn and Dask.

Each parallel worker gets a disjoint set of CPU cores, its BLAS/OpenMP/TBB thread pools are
capped to that set's size, and nested parallelism cannot oversubscribe the machine.

Importing the package only registers the joblib backend name ``"pinned"``; it never pins a
thread or changes ``os.environ`` of the importing process.
"""

from joblib import register_parallel_backend

from .core.planner import Plan, PlanError, plan_slots
from .core.topology import Topology
from .diagnostics import process_report
from .host.machine import read_topology
from .joblib_backend import PinnedBackend, shutdown_workers

__version__ = "0.1.0"

__all__ = [
    "PinnedBackend",
    "Plan",
    "PlanError",
    "Topology",
    "__version__",
    "plan_slots",
    "process_report",
    "read_topology",
    "shutdown_workers",
]

# Idempotent: registering again only rebinds the same name to the same class.
register_parallel_backend("pinned", PinnedBackend)

# ``dask worker --preload pinbackend`` looks up ``dask_setup``/``dask_teardown`` on this
# module. They live in pinbackend.dask.preload, imported on first access only, so that
# ``import pinbackend`` never imports distributed or click (and has no side effect).
_PRELOAD_HOOKS = ("dask_setup", "dask_teardown")


def __getattr__(name: str):
    """Import the Dask preload hooks on first access (PEP 562)."""
    if name in _PRELOAD_HOOKS:
        from .dask import preload

        return getattr(preload, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """List the lazy preload hooks too."""
    return sorted([*globals(), *_PRELOAD_HOOKS])
