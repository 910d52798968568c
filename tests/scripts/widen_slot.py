"""Widening a running slot: does a thread already running tasks get more BLAS/OpenMP threads
when its affinity widens and its limit is raised between two tasks? And what does each
widen/narrow cost? (issue 21, item 2; findings in docs/how-it-works.md, "Widening a running
slot".)

    python tests/scripts/widen_slot.py            # both start environments, a table
    python tests/scripts/widen_slot.py --json     # the same as JSON
    python tests/scripts/widen_slot.py --only libgomp/widen,numpy-openblas/widen

For each library loaded here (numpy's OpenBLAS, SciPy's OpenBLAS, scikit-learn's libgomp),
in a fresh interpreter started either with the thread variables unset (a plain program) or
set to 1 (as loky and pinbackend start their workers), a pool thread (not the main thread):

1. pins itself to one CPU and caps the library to 1 thread (threadpoolctl, from itself);
2. runs a task (a BLAS product, or an OpenMP region), then widens its affinity to two CPUs
   and raises the limit to 2, runs the next task, narrows back, runs a third;
3. and in two variants: the limit raised without widening the affinity, and the limit
   raised while another thread (here the main one) controls OpenBLAS through threadpoolctl.

Which threads did the work is read from each thread's own CPU clock (a thread counts when
it used at least a fifth of the task's wall time), with its affinity; the limits are read
back with ``threadpoolctl.threadpool_info()`` from the pool thread and from the main thread.
The costs are medians of 200 repetitions. Needs 2 allowed CPUs; run it on a quiet machine
(the speedups are timings).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
LIBRARIES = ("numpy-openblas", "scipy-openblas", "libgomp")


# -- reading threads ----------------------------------------------------------------------


def thread_cpu_ns(tid: int) -> int:
    """CPU time of thread ``tid`` of this process (Linux: its per-thread CPU clock)."""
    try:
        return time.clock_gettime_ns(((~tid) << 3) | 6)  # CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD
    except OSError:
        return 0


def _mask(tid: int) -> str:
    cpus = sorted(os.sched_getaffinity(tid))
    return f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else str(cpus[0])


def tids() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


def observe(op, repeats: int = 3) -> dict:
    """Run ``op`` ``repeats`` times; from the fastest run (the least disturbed by others):
    which threads worked (at least a fifth of the CPU time the run used), on which CPUs."""
    runs = []
    for _ in range(repeats):
        time.sleep(0.3)  # spinning BLAS/OpenMP helpers fall asleep first
        before = {tid: thread_cpu_ns(tid) for tid in tids()}
        start = time.perf_counter()
        op()
        wall = time.perf_counter() - start
        used = {tid: (thread_cpu_ns(tid) - before.get(tid, 0)) / 1e9 for tid in tids()}
        runs.append((wall, used))
    wall, used = min(runs, key=lambda run: run[0])
    total = sum(used.values())
    worked = [
        {"cpu_s": round(cpu, 3), "cpus": sorted(os.sched_getaffinity(tid))}
        for tid, cpu in used.items()
        if cpu >= total / 5
    ]
    return {"wall_s": round(wall, 4), "threads": len(worked), "worked": worked}


# -- the libraries ------------------------------------------------------------------------


def make_op(library: str):
    """A task of about 0.3 s on one thread that uses ``library``'s pool."""
    import numpy as np

    rng = np.random.default_rng(0)
    if library == "libgomp":
        from sklearn.metrics import pairwise_distances_argmin

        x, y = rng.random((6000, 30)), rng.random((1200, 30))
        # Manhattan: scikit-learn's generic OpenMP reduction, no BLAS inside.
        return lambda: pairwise_distances_argmin(x, y, metric="manhattan")
    a, b = rng.random((900, 900)), rng.random((900, 900))
    if library == "numpy-openblas":
        return lambda: [a @ b for _ in range(6)]
    from scipy.linalg import blas

    return lambda: [blas.dgemm(1.0, a, b) for _ in range(6)]


def controller(library: str):
    """threadpoolctl's controller of ``library`` alone."""
    from threadpoolctl import ThreadpoolController

    prefix = {"numpy-openblas": "numpy.libs", "scipy-openblas": "scipy.libs"}.get(library)
    libs = ThreadpoolController().lib_controllers
    if prefix is None:
        return next(lib for lib in libs if lib.prefix == "libgomp")
    return next(lib for lib in libs if prefix in lib.filepath)


def limit_seen(library: str) -> int:
    """The limit ``threadpool_info()`` reads back for ``library``, from the calling thread."""
    from threadpoolctl import threadpool_info

    want = controller(library).filepath
    return next(p["num_threads"] for p in threadpool_info() if p["filepath"] == want)


# -- one scenario, in a pool thread -------------------------------------------------------


def in_pool_thread(func):
    """Run ``func`` in a fresh thread (a pool thread); return its result or raise its error."""
    box = {}

    def target():
        try:
            box["result"] = func()
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=target, name="pool-thread")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def scenario(library: str, variant: str, one: set[int], two: set[int]) -> list[dict]:
    """The steps of one variant: ``widen`` (affinity, then limit), ``limit-then-affinity``,
    ``limit-only`` (then the affinity widened after the helpers started), ``other-controls``
    (the main thread holds OpenBLAS's control in threadpoolctl)."""
    from threadpoolctl import OpenBLASController

    op, lib = make_op(library), controller(library)
    op()  # warm: first-call set-up is not measured
    if variant == "other-controls":
        lib.set_num_threads(1)  # the main thread takes OpenBLAS's control in threadpoolctl
    steps = []

    def step(name: str) -> None:
        steps.append(
            {
                "step": name,
                "affinity": sorted(os.sched_getaffinity(0)),
                "limit_here": limit_seen(library),
                # A fresh thread's view: OpenBLAS's limit is the process's, OpenMP's per thread.
                "limit_other_thread": in_pool_thread(lambda: limit_seen(library)),
                **observe(op),
                # Every thread's CPUs, idle helpers included (main, pool thread, helpers).
                "all_masks": sorted(_mask(tid) for tid in tids()),
            }
        )

    def run() -> list[dict]:
        os.sched_setaffinity(0, one)
        lib.set_num_threads(1)
        step("capped to 1, 1 CPU")
        if variant in ("widen", "other-controls"):
            os.sched_setaffinity(0, two)
        lib.set_num_threads(2)
        if variant == "limit-then-affinity":
            os.sched_setaffinity(0, two)
        step({"limit-only": "limit 2, still 1 CPU"}.get(variant, "widened"))
        if variant == "limit-only":
            # Helpers started on the one CPU: do they follow when the caller widens?
            os.sched_setaffinity(0, two)
            step("then affinity widened")
        os.sched_setaffinity(0, one)
        lib.set_num_threads(1)
        step("narrowed again")
        return steps

    try:
        result = in_pool_thread(run)
    finally:
        OpenBLASController.clear_controlling_thread(force=True)
    # OpenBLAS's limit is the process's; OpenMP's the calling thread's: the main thread's view.
    result.append({"step": "main thread reads", "limit_here": limit_seen(library)})
    return result


# -- costs --------------------------------------------------------------------------------


def median_us(func, repeats: int = 200) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        func()
        samples.append(time.perf_counter_ns() - start)
    return round(statistics.median(samples) / 1000, 1)


def costs(one: set[int], two: set[int]) -> dict:
    """Median cost (µs) of each part of a widen or a narrow, measured in a pool thread."""
    from threadpoolctl import ThreadpoolController, threadpool_info

    for library in LIBRARIES:
        make_op(library)()  # every library loaded and its pool started

    def run() -> dict:
        libs = {library: controller(library) for library in LIBRARIES}
        all_threads = tids()

        def pin_all(cpus):
            for tid in tids():
                os.sched_setaffinity(tid, cpus)

        result = {
            "threads in the process": len(all_threads),
            "affinity of this thread, widen": median_us(lambda: os.sched_setaffinity(0, two)),
            "affinity of this thread, narrow": median_us(lambda: os.sched_setaffinity(0, one)),
            "affinity of every thread (/proc/self/task)": median_us(lambda: pin_all(two)),
            "threadpoolctl: find the libraries (ThreadpoolController())": median_us(
                ThreadpoolController, 50
            ),
            "threadpoolctl: threadpool_info()": median_us(threadpool_info, 50),
        }
        for library, lib in libs.items():
            result[f"{library}: set_num_threads(2) then (1), cached controller"] = median_us(
                lambda lib=lib: (lib.set_num_threads(2), lib.set_num_threads(1))
            )
        controllers = ThreadpoolController()
        result["every library: limit(2) + restore, one controller"] = median_us(
            lambda: controllers.limit(limits=2).restore_original_limits()
        )
        return result

    return in_pool_thread(run)


def first_call_after_widen(library: str, one: set[int], two: set[int], cycles: int = 7) -> dict:
    """Wall time (ms, medians over narrow-widen cycles) of a small task right after
    widening (helper threads start or wake), of the same task warm, and at 1 thread."""
    import numpy as np
    from threadpoolctl import OpenBLASController

    rng = np.random.default_rng(1)
    if library == "libgomp":
        from sklearn.metrics import pairwise_distances_argmin

        x, y = rng.random((400, 30)), rng.random((200, 30))
        small = lambda: pairwise_distances_argmin(x, y, metric="manhattan")  # noqa: E731
    else:
        a = rng.random((256, 256))
        if library == "numpy-openblas":
            small = lambda: a @ a  # noqa: E731
        else:
            from scipy.linalg import blas

            small = lambda: blas.dgemm(1.0, a, a)  # noqa: E731
    lib = controller(library)

    def run() -> dict:
        firsts, warms = [], []
        for _ in range(cycles):
            os.sched_setaffinity(0, one)
            lib.set_num_threads(1)
            for _ in range(3):
                small()
            time.sleep(0.3)  # the helpers, if any, fall asleep
            os.sched_setaffinity(0, two)
            lib.set_num_threads(2)
            firsts.append(_timed(small))
            warms.append(statistics.median(_timed(small) for _ in range(10)))
        lib.set_num_threads(1)
        return {
            "first_ms": round(statistics.median(firsts) * 1000, 2),
            "warm_ms": round(statistics.median(warms) * 1000, 2),
            "one_thread_ms": round(statistics.median(_timed(small) for _ in range(10)) * 1000, 2),
        }

    try:
        return in_pool_thread(run)
    finally:
        OpenBLASController.clear_controlling_thread(force=True)


def _timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


# -- driver -------------------------------------------------------------------------------


VARIANTS = ("widen", "limit-then-affinity", "limit-only", "other-controls")


def child(start_env: str, what: str) -> dict:
    """One measurement in this interpreter (started with ``start_env``): ``LIBRARY/VARIANT``
    (each in a fresh process: helper threads outlive a scenario), or ``costs``."""
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn.metrics  # noqa: F401
    from threadpoolctl import threadpool_info

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(f"needs 2 allowed CPUs; this process may use {cpus}")
    one, two = {cpus[0]}, {cpus[0], cpus[1]}
    if what != "costs":
        library, variant = what.split("/")
        return {"threads_at_start": len(tids()), "steps": scenario(library, variant, one, two)}
    return {
        "libraries": [
            {k: p.get(k) for k in ("prefix", "version", "threading_layer", "num_threads")}
            for p in threadpool_info()
        ],
        "first_call_after_widen": {
            library: first_call_after_widen(library, one, two) for library in LIBRARIES
        },
        "costs_us": costs(one, two),
    }


def _in_child(start_env: str, what: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if start_env == "1":
        env.update(dict.fromkeys(THREAD_VARS, "1"))
    out = subprocess.run(
        [sys.executable, __file__, "--child", start_env, what],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2])))
        return 0
    # --only LIBRARY/VARIANT,...: those scenarios alone, without the costs.
    only = set(argv[argv.index("--only") + 1].split(",")) if "--only" in argv else set()
    reports = []
    for start_env in ("unset", "1"):
        report = {"start_env": start_env, "scenarios": {}}
        if not only:
            report.update(_in_child(start_env, "costs"))
        for library in LIBRARIES:
            for variant in VARIANTS:
                if variant == "other-controls" and library == "libgomp":
                    continue  # threadpoolctl's controlling thread is OpenBLAS's alone
                what = f"{library}/{variant}"
                if only and what not in only:
                    continue
                report["scenarios"][what] = _in_child(start_env, what)
        reports.append(report)
    if "--json" in argv:
        print(json.dumps(reports, indent=1))
    else:
        print(format_reports(reports))
    return 0


def format_reports(reports: list[dict]) -> str:
    lines = []
    for report in reports:
        lines.append(f"== thread variables at start: {report['start_env']}")
        for lib in report.get("libraries", []):
            lines.append(f"   {lib}")
        for name, scenario_ in report["scenarios"].items():
            steps = scenario_["steps"]
            lines.append(f"-- {name} (threads at start: {scenario_['threads_at_start']})")
            base = steps[0]["wall_s"]
            for step in steps:
                if "wall_s" not in step:
                    lines.append(f"   {step['step']}: limit {step['limit_here']}")
                    continue
                masks = "; ".join(f"{w['cpu_s']:.2f} s on {w['cpus']}" for w in step["worked"])
                lines.append(
                    f"   {step['step']:<24} affinity {step['affinity']}, limit read back "
                    f"{step['limit_here']} (another thread: {step['limit_other_thread']}): "
                    f"{step['wall_s']:.3f} s ({base / step['wall_s']:.2f}x), "
                    f"{step['threads']} thread(s) worked: {masks}; every thread's CPUs: "
                    f"{' '.join(step['all_masks'])}"
                )
        for library, first in report.get("first_call_after_widen", {}).items():
            lines.append(
                f"-- {library}: small task right after widening {first['first_ms']} ms, "
                f"then warm {first['warm_ms']} ms; at 1 thread {first['one_thread_ms']} ms"
            )
        lines.append("-- costs (median, µs)")
        for name, value in report.get("costs_us", {}).items():
            lines.append(f"   {name}: {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
