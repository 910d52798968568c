"""Unmodified programs under the runner: what their pool workers read back from inside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from _helpers import PYTHON, blas_threads, thread_masks

SCRIPTS = Path(__file__).parent / "scripts"
ALLOWED = sorted(os.sched_getaffinity(0))
METHODS = ("fork", "spawn", "forkserver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs"),
]


def runner(*args: str, timeout: float = 120, check: bool = True):
    """``python -m pinbackend ARGS``; the last stdout line parsed as JSON when it succeeds."""
    result = subprocess.run(
        [PYTHON, "-m", "pinbackend", *args], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
        result.data = json.loads(result.stdout.strip().splitlines()[-1])
    return result


def plain_python(*args: str, timeout: float = 120) -> dict:
    """``python ARGS`` without the runner (the control); its last stdout line as JSON."""
    result = subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def distinct(reports: list[dict]) -> list[dict]:
    """One report per worker process."""
    return list({r["pid"]: r for r in reports}.values())


def assert_pinned_workers(workers: list[dict], count: int) -> list[tuple[int, ...]]:
    """Every thread of every worker on its slot, BLAS capped to it, slots disjoint."""
    assert len(workers) == count
    slots = []
    for worker in workers:
        cpus = tuple(worker["affinity"])
        assert thread_masks(worker) == {cpus}, worker["threads"]
        assert blas_threads(worker) == {len(cpus)}
        assert worker["slot"]["cores"] == list(cpus)
        slots.append(cpus)
    flat = [cpu for slot in slots for cpu in slot]
    assert len(flat) == len(set(flat)), f"slots overlap: {slots}"
    assert set(flat) <= set(ALLOWED)
    return slots


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["pool", "processpool"])
def test_process_pool_workers_get_disjoint_pinned_capped_slots(kind, method):
    data = runner(str(SCRIPTS / "pools.py"), kind, method).data
    workers = distinct(data["workers"])
    slots = assert_pinned_workers(workers, len(ALLOWED))
    assert sorted(slots) == [(cpu,) for cpu in ALLOWED]
    main_pid = data["main"]["pid"]
    for worker in workers:
        # The program's initializer still ran, after pinbackend's: already on the slot.
        assert worker["initializer"][:2] == ["user-init", worker["affinity"]]
        # The start method asked for is the one used.
        assert worker["main_module"] == ("__main__" if method == "fork" else "__mp_main__")
        assert (worker["ppid"] == main_pid) == (method != "forkserver")
    # The program's own process is neither pinned nor capped.
    assert data["main"]["affinity"] == ALLOWED and data["main"]["slot"] is None


@pytest.mark.threads
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["threadpool", "threadexec"])
def test_thread_pools_are_sized_to_the_cpus(kind, method):
    # --cores gives the job one CPU: a size of 1 differs from what the standard library
    # picks unpatched (ThreadPool: os.cpu_count(); ThreadPoolExecutor: cpu_count() + 4,
    # both from the machine, not from the job), and the control below shows that it does.
    args = [str(SCRIPTS / "pools.py"), kind, method]
    data = runner("--cores", str(ALLOWED[0]), *args).data
    assert data["thread_pool_size"] == 1
    assert plain_python(*args)["thread_pool_size"] > 1
    assert {r["pid"] for r in data["workers"]} == {data["main"]["pid"]}
    assert all("user-init" in r["initializer"] for r in data["workers"])
    # The pool's threads are pinned, not the program's main thread: it keeps every CPU.
    assert data["main"]["this_thread_mask"] == ALLOWED and data["main"]["slot"] is None


@pytest.mark.threads
@pytest.mark.parametrize("kind", ["threadpool", "threadexec"])
def test_thread_pools_run_on_disjoint_pinned_capped_threads(kind):
    args = [str(SCRIPTS / "pools.py"), kind, "fork", "8"]
    data = runner(*args).data
    threads = {r["this_thread"]["tid"]: r["this_thread"] for r in data["workers"]}
    assert len(threads) == len(ALLOWED)
    masks = sorted(tuple(t["mask"]) for t in threads.values())
    assert masks == [(cpu,) for cpu in ALLOWED]  # one core each, disjoint
    assert {t["blas"] for t in threads.values()} == {1}
    # Once the pool has ended, the program's own thread is as it was: every CPU, BLAS uncapped.
    assert data["main"]["this_thread_mask"] == ALLOWED
    assert blas_threads(data["main"]) == {len(ALLOWED)}
    # The control: without the runner every thread floats over every CPU, BLAS uncapped.
    plain = plain_python(*args)
    assert {tuple(r["this_thread"]["mask"]) for r in plain["workers"]} == {tuple(ALLOWED)}
    assert {r["this_thread"]["blas"] for r in plain["workers"]} == {len(ALLOWED)}


@pytest.mark.parametrize(("kind", "method"), [("pool", "fork"), ("processpool", "spawn")])
def test_reserved_cpus_are_never_used_by_any_thread_of_any_worker(kind, method):
    reserved = ALLOWED[-1]
    data = runner("--reserve", str(reserved), str(SCRIPTS / "pools.py"), kind, method).data
    workers = distinct(data["workers"])
    slots = assert_pinned_workers(workers, len(ALLOWED) - 1)
    assert sorted(slots) == [(cpu,) for cpu in ALLOWED if cpu != reserved]
    for worker in workers:
        assert worker["threads"] and all(
            reserved not in cpus for cpus in worker["threads"].values()
        ), worker["threads"]
    # The reserve binds the pools; the main process is neither pinned nor moved off it.
    assert data["main"]["affinity"] == ALLOWED


@pytest.mark.parametrize(
    ("outer", "inner", "processes"),
    [("fork", "fork", None), ("spawn", "spawn", None), ("forkserver", "fork", "1")],
)
def test_pools_nested_in_workers_stay_inside_the_worker(outer, inner, processes):
    options = ["-p", processes] if processes else []
    data = runner(*options, str(SCRIPTS / "nested.py"), outer, inner, "processpool").data
    outers = assert_pinned_workers(
        distinct([r["outer"] for r in data]), 1 if processes else len(ALLOWED)
    )
    for result in data:
        outer_cpus = set(result["outer"]["affinity"])
        inner = distinct(result["inner"])
        # One inner worker per core of the outer worker, each inside it.
        slots = assert_pinned_workers(inner, len(outer_cpus))
        assert set().union(*map(set, slots)) == outer_cpus
        assert result["outer"]["pid"] not in {w["pid"] for w in inner}
    assert len(outers) == (1 if processes else len(ALLOWED))


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_plain_spawned_children_start_pinned_pools_too(method):
    # A Process child (no pool, no initializer): the runner's patches reach it anyway.
    (result,) = runner(str(SCRIPTS / "nested.py"), method, "spawn", "process").data
    assert result["outer"]["slot"] is None  # the child itself is not a pool worker
    slots = assert_pinned_workers(distinct(result["inner"]), len(ALLOWED))
    assert sorted(slots) == [(cpu,) for cpu in ALLOWED]


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("pool", "fork"),
        ("pool", "spawn"),
        ("pool", "forkserver"),
        # ProcessPoolExecutor refuses max_tasks_per_child with fork.
        ("processpool", "spawn"),
        ("processpool", "forkserver"),
    ],
)
def test_maxtasksperchild_replacements_claim_a_slot_again(kind, method):
    reports = runner(str(SCRIPTS / "maxtasks.py"), method, kind).data
    workers = distinct(reports)
    assert len(workers) == len(reports) == 6  # one task each: every later one a replacement
    for worker in workers:
        # Each replacement claimed a one-CPU slot of the pool's plan and pinned every thread.
        assert worker["slot"] is not None and worker["slot"]["cores"] == worker["affinity"]
        assert len(worker["affinity"]) == 1 and worker["affinity"][0] in ALLOWED
        assert thread_masks(worker) == {tuple(worker["affinity"])}
        assert blas_threads(worker) == {1}


def test_maxtasksperchild_replacements_keep_off_reserved_cpus():
    reserved = ALLOWED[-1]
    reports = runner("--reserve", str(reserved), str(SCRIPTS / "maxtasks.py"), "spawn").data
    workers = distinct(reports)
    assert len(workers) == 6
    for worker in workers:
        assert reserved not in worker["affinity"]
        assert all(reserved not in cpus for cpus in worker["threads"].values())


def test_joblib_default_backend_is_pinned_and_n_jobs_none_stays_inline():
    data = runner(str(SCRIPTS / "joblib_default.py")).data
    assert data["backend"] == "RunnerDefaultBackend"
    main_pid = {r["pid"] for r in data["inline"]}
    assert len(main_pid) == 1 and all(r["slot"] is None for r in data["inline"])
    workers = distinct(data["parallel"])
    assert main_pid.isdisjoint({w["pid"] for w in workers})
    assert sorted(assert_pinned_workers(workers, len(ALLOWED))) == [(c,) for c in ALLOWED]


def test_a_parallel_call_plans_around_the_programs_live_pools_and_keeps_its_options(tmp_path):
    # Under the runner, joblib calls plan around the program's live pools; passing an option
    # to Parallel must not turn the job's settings into the caller's own.
    script = tmp_path / "options.py"
    script.write_text(
        "import json, multiprocessing\n"
        "from joblib import Parallel, delayed\n"
        "def cores():\n"
        "    from pinbackend.host.slot import current_slot\n"
        "    return sorted(current_slot().cores)\n"
        "if __name__ == '__main__':\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        pool_cores = pool.apply(cores)\n"
        "        parallel = Parallel(n_jobs=-1, backend='pinned', claim_timeout=5)\n"
        "        workers = parallel(delayed(cores)() for i in range(4))\n"
        "        options = parallel._backend.options\n"
        "        print(json.dumps({'pool': pool_cores, 'workers': workers,\n"
        "                          'reserve': sorted(options.reserve),\n"
        "                          'timeout': options.claim_timeout}))\n"
    )
    data = runner("--cores-per-worker", "1", str(script)).data
    assert data["reserve"] == [] and data["timeout"] == 5
    assert len(data["pool"]) == 1
    assert all(not set(cores) & set(data["pool"]) for cores in data["workers"])


def test_p_overrides_joblib_n_jobs_too():
    # -p 1 turns the script's Parallel(n_jobs=-1) into n_jobs=1, which joblib runs inline.
    data = runner("-p", "1", str(SCRIPTS / "joblib_default.py")).data
    main_pid = {r["pid"] for r in data["inline"]}
    assert {r["pid"] for r in data["parallel"]} == main_pid


def test_p_overrides_pool_sizes():
    data = runner("-p", "1", str(SCRIPTS / "pools.py"), "pool", "spawn").data
    assert_pinned_workers(distinct(data["workers"]), 1)
    assert distinct(data["workers"])[0]["affinity"] == ALLOWED


def test_cores_limits_the_pools_to_those_cpus():
    data = runner("--cores", str(ALLOWED[0]), str(SCRIPTS / "pools.py"), "processpool", "fork")
    (worker,) = distinct(data.data["workers"])
    assert worker["affinity"] == [ALLOWED[0]]
    assert data.data["main"]["affinity"] == ALLOWED  # the main process is not pinned


def test_p_beyond_the_free_cores_is_clamped_with_a_note():
    too_many = str(len(ALLOWED) + 1)
    result = runner("-p", too_many, str(SCRIPTS / "pools.py"), "processpool", "spawn")
    assert_pinned_workers(distinct(result.data["workers"]), len(ALLOWED))
    assert "PoolResizedWarning" in result.stderr
    assert f"instead of {too_many} (-p {too_many})" in result.stderr
    assert "See python -m pinbackend explain pool-resized (https://" in result.stderr
    # The note points at the program's line that made the pool, not at pinbackend.
    assert "pools.py:" in result.stderr.split("PoolResizedWarning")[0].splitlines()[-1]


def test_error_policy_fails_in_the_program_and_share_policy_shares_with_a_warning():
    too_many = str(len(ALLOWED) + 1)
    args = [str(SCRIPTS / "pools.py"), "pool", "spawn"]
    strict = runner("--oversubscribe", "error", "-p", too_many, *args, check=False)
    assert strict.returncode == 1
    assert f"PlanError: Pool(processes=None) asks for {too_many} workers" in strict.stderr
    shared = runner("--oversubscribe", "share", "-p", too_many, *args)
    workers = distinct(shared.data["workers"])
    assert len(workers) == int(too_many)
    assert all(
        len(w["affinity"]) == 1 and thread_masks(w) == {tuple(w["affinity"])} for w in workers
    )
    assert "OversubscriptionWarning" in shared.stderr


def test_threads_caps_the_main_process_even_for_libraries_loaded_later():
    args = [str(SCRIPTS / "main_report.py"), "sklearn"]
    plain = runner(*args).data
    capped = runner("-t", "1", *args).data
    assert {p["num_threads"] for p in plain["thread_pools"]} == {len(ALLOWED)}
    # numpy's OpenBLAS, scipy's and scikit-learn's OpenMP all loaded after the runner
    # started: each was capped as it loaded.
    assert {p["internal_api"] for p in capped["thread_pools"]} >= {"openblas", "openmp"}
    assert {p["num_threads"] for p in capped["thread_pools"]} == {1}
    assert capped["affinity"] == ALLOWED  # capped, not pinned
    assert capped["env"] == plain["env"]  # and os.environ untouched


def test_pin_main_pins_every_thread_of_the_main_process():
    data = runner("--pin-main", "--reserve", str(ALLOWED[-1]), str(SCRIPTS / "main_report.py"))
    report = data.data
    assert report["affinity"] == ALLOWED[:-1]
    assert thread_masks(report) == {tuple(ALLOWED[:-1])}
    assert blas_threads(report) == {len(ALLOWED) - 1}


OPENMP_TIMEOUT = 60


@pytest.mark.parametrize("how", ["pool", "joblib"])
def test_fork_after_openmp_with_one_cpu_workers_keeps_fork_and_finishes(how):
    data = runner(str(SCRIPTS / "openmp_fork.py"), how, timeout=OPENMP_TIMEOUT).data
    workers = distinct(data["workers"])
    assert len(workers) == len(ALLOWED)
    for worker in workers:
        assert worker["ppid"] == data["main_pid"]  # forked, as asked
        openmp = [p["num_threads"] for p in worker["thread_pools"] if p["user_api"] == "openmp"]
        assert openmp == [1]


@pytest.mark.parametrize("how", ["pool", "joblib"])
def test_fork_after_openmp_with_multi_cpu_workers_switches_to_forkserver(how):
    result = runner("-p", "1", str(SCRIPTS / "openmp_fork.py"), how, timeout=OPENMP_TIMEOUT)
    (worker,) = distinct(result.data["workers"])
    assert worker["affinity"] == ALLOWED
    assert worker["ppid"] != result.data["main_pid"]  # a forkserver child, not forked
    assert "ForkAfterOpenMPWarning" in result.stderr
    assert "See python -m pinbackend explain fork-after-openmp (https://" in result.stderr


def test_without_the_runner_the_same_program_hangs():
    # The control for the two tests above: plain fork after OpenMP really hangs here.
    # Its own session, so that the hung workers can be killed with their parent.
    with subprocess.Popen(
        [PYTHON, str(SCRIPTS / "openmp_fork.py"), "pool"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    ) as program:
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                program.wait(timeout=15)
        finally:
            os.killpg(program.pid, signal.SIGKILL)
            program.wait()


@pytest.mark.threads
def test_a_thread_pool_nested_in_a_pool_worker_subdivides_its_slot(tmp_path):
    script = tmp_path / "nested_threads.py"
    script.write_text(
        "import json, os, threading, time\n"
        "from multiprocessing import Pool\n"
        "from multiprocessing.pool import ThreadPool\n"
        "def thread_task(_):\n"
        "    time.sleep(0.2)\n"
        "    return threading.get_native_id(), sorted(os.sched_getaffinity(0))\n"
        "def worker_task(_):\n"
        "    from pinbackend.host.slot import current_slot\n"
        "    with ThreadPool() as threads:\n"
        "        seen = dict(threads.map(thread_task, range(8)))\n"
        "    return sorted(current_slot().cores), sorted(seen.values())\n"
        "if __name__ == '__main__':\n"
        "    with Pool() as pool:\n"
        "        print(json.dumps(pool.map(worker_task, range(1))))\n"
    )
    data = runner("--cores-per-worker", str(len(ALLOWED)), str(script)).data
    ((slot, masks),) = data
    assert slot == ALLOWED
    assert masks == [[cpu] for cpu in ALLOWED]  # one thread per core of the worker's slot
