"""The functions the benchmark's workers run. Importable and cheap to import.

Workers unpickle these functions by reference, so every worker imports this module: it must
not import scikit-learn or Dask at the top (the pool-start measurement would then time
those imports), and it must not import :mod:`pinbackend` itself, so that workers of plain
loky or ``multiprocessing`` pools stay as plain as a user's own.
"""

from __future__ import annotations

import os
import threading


def blas_task(size: int, reps: int, seed: int = 0) -> float:
    """Many medium BLAS/LAPACK calls (products, solves) and one SVD; return a checksum.

    Medium matrices called many times are where spinning BLAS threads of an oversubscribed
    machine hurt most (each call is short, so threads keep waking and waiting).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = rng.random((size, size)), rng.random((size, size))
    well_posed = a + size * np.eye(size)
    total = 0.0
    for _ in range(reps):
        total += float((a @ b)[0, 0])
        total += float(np.linalg.solve(well_posed, b)[0, 0])
    total += float(np.linalg.svd(a, compute_uv=False)[0])
    return total


def nested_task(n_inner: int, size: int, reps: int, seed: int = 0) -> float:
    """An outer task that runs an inner joblib ``Parallel(n_jobs=-1)`` over BLAS tasks.

    No backend is named: the inner call uses whatever joblib's nesting rules give inside the
    outer worker (threads under loky and ``multiprocessing``, a pinned sub-pool confined to
    the worker's slot under ``"pinned"``), exactly as user code would get it.
    """
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=-1)(
        delayed(blas_task)(size, reps, seed * n_inner + i) for i in range(n_inner)
    )
    return float(sum(results))


def tiny_task(x: int) -> int:
    """A task that does almost nothing: the benchmark of dispatch overhead."""
    return x + 1


def worker_id() -> tuple[int, int]:
    """Which process and thread ran this task: tells when every worker of a pool is up."""
    return os.getpid(), threading.get_native_id()


def eig_task(size: int, reps: int, seed: int = 0) -> float:
    """``np.linalg.eig`` on random ``size`` x ``size`` matrices, as in the SciPy 2018 paper
    on composable multi-threading (Malakhov et al.): LAPACK calls that release the GIL."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(reps):
        total += float(np.abs(np.linalg.eig(rng.random((size, size)))[0]).max())
    return total
