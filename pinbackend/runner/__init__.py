"""The runner: ``python -m pinbackend [options] script.py`` runs an unmodified program with
pinned pools.

While the program runs, ``multiprocessing.Pool`` (every start method),
``multiprocessing.pool.ThreadPool``, ``concurrent.futures.ProcessPoolExecutor`` and
``ThreadPoolExecutor`` are patched: process-pool workers each claim a disjoint slot of the
job's free cores (pinned, thread pools capped), thread pools are sized to the CPUs they
may use, and joblib's default backend is ``"pinned"``. Pools only plan over cores that no
other job's lease holds, so jobs started side by side get disjoint cores. The main process
is neither pinned nor capped unless asked, and ``os.environ`` is never changed.

:func:`run_job` (:func:`start_job` then :func:`run_target`) is what the command line calls;
:func:`install` patches the current process for library use (``uninstall`` undoes it).
"""

from __future__ import annotations

import atexit
import shlex
import sys

from ..host.jobs import register_job
from ._children import ChildProcessPatch
from ._config import RunnerConfig
from ._futures import ProcessPoolExecutorPatch, ThreadPoolExecutorPatch
from ._install import install, installed, register, uninstall
from ._joblib import JoblibPatch
from ._main_process import prepare_main_process
from ._mp_pool import MultiprocessingPoolPatch
from ._plan import survey
from ._target import Target, TargetError, check_target, run_target
from ._warnings import (
    ForkAfterOpenMPWarning,
    PoolResizedWarning,
    SharedCoresWarning,
    WaitingForCoresWarning,
)

__all__ = [
    "ForkAfterOpenMPWarning",
    "PoolResizedWarning",
    "RunnerConfig",
    "SharedCoresWarning",
    "Target",
    "TargetError",
    "WaitingForCoresWarning",
    "check_target",
    "install",
    "installed",
    "run_job",
    "run_target",
    "start_job",
    "uninstall",
]

# The registry's patches, in install order. Filled here, on the package's import, which runs
# before any submodule's: a spawned worker unpickling its initializer has them all.
register(
    MultiprocessingPoolPatch(),
    ProcessPoolExecutorPatch(),
    ThreadPoolExecutorPatch(),
    JoblibPatch(),
    ChildProcessPatch(),
)


def _command_line() -> str:
    return shlex.join(getattr(sys, "orig_argv", None) or sys.argv)


def start_job(config: RunnerConfig, target: Target) -> None:
    """Everything before the program runs: check it, record the job, set up this process.

    Records the job (for ``pinbackend status``), applies ``--pin-main``/``--threads`` to this
    process and installs the patches. Raises :class:`TargetError` (with python's message and
    status) when the target cannot run, ``PlanError`` when ``--pin-main`` finds no free CPU,
    ``RegistryError`` when the lease registry is unusable or holds an unsafe lock file.
    """
    check_target(target)
    # One survey before the program runs: an unusable registry or an unsafe lock file ends
    # the job here in one line, not in the program's first pool.
    view = survey(config)
    if config.pin_main or config.threads is not None:
        prepare_main_process(config, view.usable - view.strangers)
    job = register_job(_command_line(), config.record())
    atexit.register(job.end)
    install(config)


def run_job(config: RunnerConfig, target: Target) -> None:
    """Run ``target`` in this process as a runner job with ``config``.

    The target runs as python would: its exit status, exceptions and ``KeyboardInterrupt``
    propagate unchanged.
    """
    start_job(config, target)
    run_target(target)
