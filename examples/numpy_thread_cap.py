"""Demo 3: cap NumPy's thread pool in a program's main process, without changing the program.

``python -m pinbackend -t N program.py`` (like ``python -m tbb -p N``) caps the BLAS, OpenMP
and TBB thread pools of the main process at N threads. It works even though the program
imports NumPy only after the runner started: the cap is re-applied as the library loads.
Nothing is pinned and ``os.environ`` is left as it was, so programs it starts are not capped.

Run: python examples/numpy_thread_cap.py   (PINBACKEND_EXAMPLE_SMALL=1 for a quick run)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SMALL = os.environ.get("PINBACKEND_EXAMPLE_SMALL") == "1"


def program() -> None:
    """The unmodified program: import NumPy, multiply matrices, say how it ran."""
    import numpy as np
    from threadpoolctl import threadpool_info

    size, reps = (300, 5) if SMALL else (1500, 10)
    a = np.random.default_rng(0).random((size, size))
    start = time.perf_counter()
    for _ in range(reps):
        a @ a
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "blas_threads": [p["num_threads"] for p in threadpool_info()],
                "cpus": sorted(os.sched_getaffinity(0)),
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            }
        )
    )


def run(*runner_args: str) -> dict:
    command = [sys.executable, *runner_args, __file__, "--program"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    for title, args in [
        ("python program.py", ()),
        ("python -m pinbackend -t 1 program.py", ("-m", "pinbackend", "-t", "1")),
    ]:
        data = run(*args)
        if args and set(data["blas_threads"]) != {1}:
            sys.exit(f"the demo went wrong: BLAS threads {data['blas_threads']} under -t 1")
        print(f"$ {title}")
        print(
            f"  BLAS threads {data['blas_threads']}, may run on CPUs {data['cpus']}, "
            f"OPENBLAS_NUM_THREADS={data['OPENBLAS_NUM_THREADS']}, "
            f"matrix products took {data['seconds']:.2f} s"
        )


if __name__ == "__main__":
    if "--program" in sys.argv:
        program()
    else:
        main()
