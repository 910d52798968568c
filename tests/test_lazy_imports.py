"""Nothing hangs when pinned threads load libraries: every thread path, many fresh runs.

A pinned thread caps its BLAS/OpenMP pools again after an import loaded a library. The code
at abfbaad asked the dynamic loader which libraries were loaded (``dl_iterate_phdr``), whose
callback ran Python under the loader's lock, while another pool thread held the GIL inside
``dlopen``: a lock-order deadlock in about 1 run of 7 of the first script below, and in 9 of
10 runs of ``scripts/lazy_imports.py`` on the joblib thread paths (2 cores, 2026-12-07).
Each test here starts fresh interpreters (an import is lazy only once per process), many
times, two at a time; a run that does not finish is killed with SIGABRT, whose faulthandler
dump of every thread's stack is the failure message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import PYTHON

SCRIPTS = Path(__file__).parent / "scripts"
LAZY = str(SCRIPTS / "lazy_imports.py")
ALLOWED = sorted(os.sched_getaffinity(0))

#: One run takes 0.5-3 s here (2 cores, other tests' processes around). A run still going
#: after this long is hung: the deadlocks this file guards against never resolve.
RUN_LIMIT = 60.0
#: A share of every test's runs. ``tox -e ft`` runs a quarter of them (``0.25``): fresh
#: interpreters of its free-threaded build (no PGO) start slower, and it runs in CI beside the
#: GIL build, which runs them all.
RUNS_SCALE = float(os.environ.get("PINBACKEND_LAZY_RUNS_SCALE", "1"))
#: The first script of the issue: numpy 2 loads numpy.random's C extensions on first use.
NUMPY_RANDOM = """
import pinbackend, numpy as np
from joblib import Parallel, delayed
def f(i):
    return np.random.default_rng(i).random()
print(Parallel(n_jobs=2, backend="pinned", {hint})(delayed(f)(i) for i in range(4)))
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.threads,
    pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs for two pinned threads"),
]


def run_fresh(argv: list[str], runs: int, tmp_path: Path, *, parallel: int = 2) -> None:
    """Run ``python ARGV`` ``runs`` times, ``parallel`` at a time, each in a fresh interpreter
    with its own lease registry; fail with every thread's stack if one does not finish.
    ``RUNS_SCALE`` scales ``runs`` (two at least, where more were asked)."""
    runs = max(min(runs, 2), round(runs * RUNS_SCALE))
    pending = list(range(runs))
    running: list[tuple[subprocess.Popen, float, int]] = []
    while pending or running:
        while pending and len(running) < parallel:
            index = pending.pop(0)
            registry = tmp_path / f"registry-{index}"
            registry.mkdir(mode=0o700)
            env = {**os.environ, "PINBACKEND_RUNTIME_DIR": str(registry)}
            child = subprocess.Popen(
                [PYTHON, "-X", "faulthandler", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            running.append((child, time.monotonic() + RUN_LIMIT, index))
        time.sleep(0.05)
        for entry in list(running):
            child, deadline, index = entry
            if child.poll() is None and time.monotonic() < deadline:
                continue
            running.remove(entry)
            if child.returncode is None:
                child.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
                _, err = child.communicate(timeout=30)
                for other, _, _ in running:
                    other.kill()
                    other.communicate()
                pytest.fail(
                    f"run {index + 1} of {runs} of {' '.join(argv)} hung for {RUN_LIMIT:g}s; "
                    f"its threads:\n{err[-20000:]}"
                )
            out, err = child.communicate()
            assert child.returncode == 0, f"run {index + 1} of {' '.join(argv)} failed:\n{err}"
            assert out.strip(), f"run {index + 1} printed nothing:\n{err}"


# 100 runs of about 0.7 s, two at a time, take about 40 s here; a loaded CI machine may take
# several times that. The limit leaves room for 100 runs at 6 s each plus one hung run.
@pytest.mark.timeout(420)
@pytest.mark.parametrize("hint", ['prefer="threads"', 'require="sharedmem"'])
def test_the_issues_numpy_random_script_never_hangs_in_100_runs(hint, tmp_path):
    """The reported script, and its shared-memory variant, 100 fresh runs each."""
    run_fresh(["-c", NUMPY_RANDOM.format(hint=hint)], 100, tmp_path)


@pytest.mark.parametrize("path", ["threads", "sharedmem", "nested"])
def test_joblib_thread_paths_load_extension_modules_without_hanging(path, tmp_path):
    """joblib's thread paths on "pinned", tasks importing a new module each (9 of 10 runs
    of the first two, 5 of 6 of ``nested``, hung at abfbaad)."""
    run_fresh([LAZY, path], 12, tmp_path)


@pytest.mark.parametrize("threads", [None, "1"], ids=["uncapped-main", "threads-1"])
@pytest.mark.parametrize("pool", ["threadpool", "threadexec"])
def test_runner_thread_pools_load_extension_modules_without_hanging(pool, threads, tmp_path):
    """The runner's ThreadPool and ThreadPoolExecutor, with and without ``-t`` (whose watch
    of the main process's libraries runs after every extension-module import)."""
    cap = ["-t", threads] if threads else []
    run_fresh(["-m", "pinbackend", *cap, LAZY, pool], 8, tmp_path)


@pytest.mark.dask
def test_dask_worker_threads_load_extension_modules_without_hanging(tmp_path):
    """A pinned Dask worker with two task threads, tasks importing a new module each."""
    pytest.importorskip("distributed")
    run_fresh([LAZY, "dask"], 4, tmp_path, parallel=1)


def test_a_hung_run_fails_with_every_threads_stack(tmp_path, monkeypatch):
    """The harness itself: a run that never ends fails within the limit, showing stacks."""
    monkeypatch.setattr(sys.modules[__name__], "RUN_LIMIT", 3.0)
    hang = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(99,)).start()\n"
        "time.sleep(99)"
    )
    with pytest.raises(pytest.fail.Exception) as failure:
        run_fresh(["-c", hang], 1, tmp_path)
    message = str(failure.value)
    assert "hung for 3s" in message
    assert message.count("hread 0x") >= 2, message  # "Current thread 0x..." and the other
