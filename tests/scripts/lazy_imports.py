"""Pinned threads whose tasks load extension modules for the first time, on one thread path.

Usage: python lazy_imports.py PATH [TASKS]

Every task imports modules nobody imported before (numpy's random and FFT, SciPy
submodules, the standard library's own extension modules), so threads load shared libraries
(``dlopen`` with the GIL held) while other pool threads start their tasks. Capping code that
calls into Python while the dynamic loader's lock is held deadlocks against such a load: the
runs of this script that hang are the bug. PATH names one thread path:

- ``threads``: joblib ``prefer="threads"`` on the pinned backend;
- ``sharedmem``: joblib ``require="sharedmem"`` on the pinned backend;
- ``nested``: one pinned process worker on every core, running ``prefer="threads"`` calls
  inside (its slot subdivided among their threads);
- ``threadpool``, ``threadexec``: ``multiprocessing.pool.ThreadPool`` and
  ``ThreadPoolExecutor``, for the runner (``python -m pinbackend [-t N] lazy_imports.py ...``);
- ``dask``: a local Dask cluster of one worker with two threads, pinned by ``PinPlugin``.

Prints one JSON line: the path and how many tasks ran.
"""

from __future__ import annotations

import importlib
import json
import sys

#: Modules that load shared libraries on first import; each task takes the next one.
LAZY_MODULES = (
    "numpy.random",
    "numpy.fft",
    "scipy.special",
    "scipy.linalg",
    "scipy.sparse.csgraph",
    "scipy.spatial",
    "scipy.ndimage",
    "scipy.signal",
    "scipy.fft",
    "scipy.integrate",
    "scipy.interpolate",
    "scipy.optimize",
    "scipy.stats",
    "scipy.cluster",
    "scipy.io",
    "_decimal",
    "_bz2",
    "_lzma",
    "_sqlite3",
    "_codecs_jp",
    "_codecs_kr",
    "_codecs_cn",
    "_codecs_tw",
    "_codecs_hk",
    "_codecs_iso2022",
    "_ctypes_test",
    "_testbuffer",
    "_testmultiphase",
    "audioop",
    "cmath",
    "_zoneinfo",
    "_uuid",
)


def load(index: int) -> str:
    """A task: import the index-th lazy module (those left over, in turn) and use numpy."""
    name = LAZY_MODULES[index % len(LAZY_MODULES)]
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # an optional module this Python was built without: the others still load
    import numpy as np

    np.random.default_rng(index).random((8, 8)).sum()
    return name


def nested_call(index: int) -> list[str]:
    """A pinned process worker's task: a threaded call of its own inside it."""
    from joblib import Parallel, delayed

    return Parallel(n_jobs=2, prefer="threads")(delayed(load)(index + i) for i in range(4))


def run(path: str, tasks: int) -> int:
    indices = range(tasks)
    if path in ("threads", "sharedmem", "nested"):
        from joblib import Parallel, delayed

        import pinbackend  # noqa: F401  (registers "pinned")

        if path == "nested":
            import os

            calls = [delayed(nested_call)(i * 4) for i in range(max(tasks // 4, 2))]
            cores = len(os.sched_getaffinity(0))
            done = Parallel(n_jobs=-1, backend="pinned", cores_per_worker=cores)(calls)
            return sum(len(names) for names in done)
        hint = {"prefer": "threads"} if path == "threads" else {"require": "sharedmem"}
        return len(Parallel(n_jobs=2, backend="pinned", **hint)(delayed(load)(i) for i in indices))
    if path == "threadpool":
        from multiprocessing.pool import ThreadPool

        with ThreadPool(2) as pool:
            return len(pool.map(load, indices, chunksize=1))
    if path == "threadexec":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as executor:
            return len(list(executor.map(load, indices)))
    if path == "dask":
        return run_dask(tasks)
    raise SystemExit(f"unknown path {path!r}; see the module docstring")


def run_dask(tasks: int) -> int:
    from distributed import Client, LocalCluster

    from pinbackend.dask import PinPlugin

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(PinPlugin())
        return len(client.gather(client.map(load, range(tasks), pure=False)))


if __name__ == "__main__":
    chosen = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else len(LAZY_MODULES)
    print(json.dumps({"path": chosen, "tasks": run(chosen, count)}))
