"""A bench plugin for the tests: strategies that sleep, hang in setup or fail.

Loaded with ``bench --plugin _bench_plugin`` (the tests put this folder on PYTHONPATH), in
the benchmark and in every measurement process, as a user's plugin would be.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time

from pinbackend.bench.strategies import Runner, Strategy, register_strategy
from pinbackend.bench.workloads import Workload, register_workload

#: File where the sleeper writes the pids of its helper processes.
PIDS_ENV = "BENCH_TEST_PIDS"


def _sleep_forever() -> None:
    time.sleep(3600)


class _SleepingRunner(Runner):
    def map(self, func, args):
        time.sleep(3600)  # far beyond any timeout
        return []


class Sleeper(Strategy):
    """Starts a helper process (as a pool would), then sleeps in its timed part."""

    name = "sleeper"
    label = "sleeper"
    summary = "sleeps far beyond the timeout (tests)"

    @contextlib.contextmanager
    def open(self, n_jobs):
        helper = multiprocessing.get_context("spawn").Process(target=_sleep_forever)
        helper.start()
        with open(os.environ[PIDS_ENV], "a") as pids:
            pids.write(f"{os.getpid()} {helper.pid}\n")
        yield _SleepingRunner()


class SlowSetup(Strategy):
    """Never finishes starting."""

    name = "slow-setup"
    label = "slow setup"
    summary = "hangs before the timed part (tests)"

    @contextlib.contextmanager
    def open(self, n_jobs):
        time.sleep(3600)
        yield _SleepingRunner()


class Broken(Strategy):
    """Fails with a clear error."""

    name = "broken"
    label = "broken"
    summary = "raises while starting (tests)"

    @contextlib.contextmanager
    def open(self, n_jobs):
        raise RuntimeError("broken strategy: this pool cannot start (on purpose)")
        yield


def _measure(strategy, n_jobs, params, window):
    with strategy.open(n_jobs) as runner:
        window.start()
        runner.map(None, [])
        window.stop()
    return {}


for _strategy in (Sleeper(), SlowSetup(), Broken()):
    register_strategy(_strategy)

register_workload(
    Workload(
        name="sleepy",
        number="T",
        title="Test workload",
        metric="time",
        strategies=("sequential", "sleeper", "slow-setup", "broken"),
        params={"quick": {}, "full": {}},
        timeout={"quick": 1.0, "full": 1.0},
        measure=_measure,
        describe=lambda params, n_jobs: "sleeps",
        hangs={"sleeper": "sleeps on purpose"},
    )
)
