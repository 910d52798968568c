"""``python -m pinbackend bench``: pinbackend against the usual ways of running parallel work.

The pieces, one module per reason to change:

* :mod:`.tasks`: the functions workers run (cheap to import);
* :mod:`.workloads`: what is measured, at which size, with which strategies;
* :mod:`.strategies`: how the work is run (sequential, a hand-pinned pool, joblib's loky,
  multiprocessing and threading backends, Dask, pinned);
* :mod:`.measure` and :mod:`._child`: one measurement in its own process, with a timeout;
* :mod:`.procstat`: the kernel's counters (noise, migrations, preemptions);
* :mod:`.moving`: workloads where the host changes during a call (a neighbour leaves, a
  call's tail, a job arrives), with their targets;
* :mod:`.freethreaded`: threads or processes, with and without the GIL (a free-threaded
  build against a GIL build, side by side);
* :mod:`.users`: two users running the same job at once (their own registries);
* :mod:`.suite`: the interleaved rounds; :mod:`.report`, :mod:`.targets`, :mod:`.chart`:
  the table, the JSON, the checks of the targets and the PNG chart.

Importing this package imports neither scikit-learn nor Dask (joblib itself loads numpy).
"""

from . import (
    freethreaded,  # noqa: F401  (registers pycpu, solve-svd, ft-* and the -gil strategies)
    moving,  # noqa: F401  (registers staggered, tail, arrival and their targets)
    users,  # noqa: F401  (registers two-users and the pinned-blind strategy)
)
from .report import format_table, summarize, write_json
from .strategies import STRATEGIES, Strategy, register_strategy
from .suite import BenchConfig, run_benchmark
from .targets import check_targets, format_targets
from .workloads import WORKLOADS, Workload, register_workload

__all__ = [
    "STRATEGIES",
    "WORKLOADS",
    "BenchConfig",
    "Strategy",
    "Workload",
    "check_targets",
    "format_table",
    "format_targets",
    "register_strategy",
    "register_workload",
    "run_benchmark",
    "summarize",
    "write_json",
]
