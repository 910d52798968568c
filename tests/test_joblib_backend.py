"""The "pinned" joblib backend, checked from inside real loky workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest
from _helpers import blas_threads, openmp_threads, thread_masks
from _tasks import blas_product, die, nested, pool_size_inside, report, two_levels
from joblib import Parallel, delayed, parallel_backend, parallel_config
from joblib.externals.loky.process_executor import TerminatedWorkerError

import pinbackend
from pinbackend import PinnedBackend, PlanError
from pinbackend.core.planner import OversubscriptionWarning
from pinbackend.host.holders import list_leases
from pinbackend.host.leases import claim
from pinbackend.host.notices import PoolResizedWarning

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs")


@pytest.fixture(autouse=True)
def stop_workers():
    """loky keeps its workers for reuse; stop them so each test leaves no process behind."""
    yield
    pinbackend.shutdown_workers()


def worker_reports(reports):
    """One report per distinct worker process."""
    return list({r["pid"]: r for r in reports}.values())


def assert_pinned_and_capped(reports, n_workers):
    workers = worker_reports(reports)
    assert len(workers) == n_workers
    slots = [tuple(w["affinity"]) for w in workers]
    for worker in workers:
        # Every thread of the worker (main, loky's, OpenBLAS's) is on the slot.
        assert thread_masks(worker) == {tuple(worker["affinity"])}
        assert blas_threads(worker) == {len(worker["affinity"])}
        assert worker["cpu_count"] == len(worker["affinity"])
        assert worker["env"]["OPENBLAS_NUM_THREADS"] == str(len(worker["affinity"]))
        assert worker["pid"] != os.getpid()
    flat = [cpu for slot in slots for cpu in slot]
    assert len(flat) == len(set(flat)), f"slots overlap: {slots}"
    return slots


def test_import_registers_the_name_and_changes_nothing_else():
    code = """
    import json, os
    before_env = dict(os.environ)
    before_mask = {t: os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
    import pinbackend, pinbackend
    from joblib.parallel import BACKENDS
    after_mask = {t: os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
    print(json.dumps({"registered": BACKENDS["pinned"] is pinbackend.PinnedBackend,
                      "env_same": dict(os.environ) == before_env,
                      "mask_same": all(after_mask[t] == m for t, m in before_mask.items())}))
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == '{"registered": true, "env_same": true, "mask_same": true}'


def test_parallel_backend_n_jobs_2_gives_disjoint_capped_slots():
    with parallel_backend("pinned", n_jobs=2):
        reports = Parallel()(delayed(report)(0.3) for _ in range(6))
    slots = assert_pinned_and_capped(reports, 2)
    assert sorted(slots) == [(cpu,) for cpu in ALLOWED[:2]]


def test_n_jobs_none_runs_inline_as_with_loky_unless_the_context_sets_n_jobs():
    with parallel_config(backend="pinned"):
        assert Parallel()._effective_n_jobs() == 1
        reports = Parallel()(delayed(report)() for _ in range(2))
    assert {r["pid"] for r in reports} == {os.getpid()}
    with parallel_config(backend="pinned", n_jobs=-1):
        reports = Parallel()(delayed(report)(0.3) for _ in range(6))
    assert_pinned_and_capped(reports, len(ALLOWED))
    with parallel_backend("pinned"):  # joblib's parallel_backend defaults n_jobs to -1
        reports = Parallel()(delayed(report)(0.3) for _ in range(6))
    assert_pinned_and_capped(reports, len(ALLOWED))


def test_parallel_backend_argument_and_minus_one():
    reports = Parallel(n_jobs=-1, backend="pinned")(delayed(report)(0.3) for _ in range(6))
    assert_pinned_and_capped(reports, len(ALLOWED))


def test_n_jobs_1_runs_inline_like_joblib_and_leaves_the_caller_alone():
    before = {t.id: os.sched_getaffinity(t.id) for t in psutil.Process().threads()}
    reports = Parallel(n_jobs=1, backend="pinned")(delayed(report)() for _ in range(2))
    assert {r["pid"] for r in reports} == {os.getpid()}
    after = {t.id: os.sched_getaffinity(t.id) for t in psutil.Process().threads()}
    # Every thread keeps its mask (a thread an earlier test left may end meanwhile).
    assert {tid: after[tid] for tid in before.keys() & after.keys()} == {
        tid: before[tid] for tid in before.keys() & after.keys()
    }
    assert list_leases(scope=None) == []


def test_minus_two_is_all_free_cores_but_one():
    backend = PinnedBackend()
    assert backend.effective_n_jobs(-1) == len(ALLOWED)
    assert backend.effective_n_jobs(-2) == max(len(ALLOWED) - 1, 2)
    assert backend.effective_n_jobs(None) == 1
    # One worker left: joblib is told 2 so that the work runs in one pinned worker holding
    # a lease, never inline in the unleased caller (see the one-free-core test below).
    assert PinnedBackend(reserve={ALLOWED[0]}).effective_n_jobs(-1) == max(len(ALLOWED) - 1, 2)
    for zero in (0, 0.0):
        with pytest.raises(ValueError) as error:
            backend.effective_n_jobs(zero)
        assert str(error.value) == (
            f"n_jobs == 0 in Parallel has no meaning; got n_jobs={zero!r}. Use a positive int "
            "(that many workers), -1 (all free cores), -2 (all free cores but one, and so on) "
            "or None (the enclosing parallel_config's n_jobs, else 1)"
        )
    # Parallel converts n_jobs to int first (0.5 becomes 0), then asks the backend.
    with pytest.raises(ValueError, match=r"got n_jobs=0\. Use a positive int"):
        Parallel(n_jobs=0.5, backend="pinned")(delayed(report)() for _ in range(2))


def test_more_workers_than_cores_clamp_with_one_warning_per_process():
    too_many = len(ALLOWED) + 1
    with pytest.warns(PoolResizedWarning) as caught:
        for _ in range(3):
            reports = Parallel(n_jobs=too_many, backend="pinned")(
                delayed(report)(0.2) for _ in range(2 * too_many)
            )
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"runs {len(ALLOWED)} workers instead of {too_many}" in message
    assert "pass oversubscribe='error' to get an error instead" in message
    assert_pinned_and_capped(reports, len(ALLOWED))


def test_sharing_is_opt_in_and_warns():
    too_many = len(ALLOWED) + 1
    with (
        pytest.warns(OversubscriptionWarning),
        parallel_config(backend="pinned", n_jobs=too_many, oversubscribe="share"),
    ):
        reports = Parallel()(delayed(report)(0.3) for _ in range(3 * too_many))
    for worker in worker_reports(reports):
        assert thread_masks(worker) == {tuple(worker["affinity"])}
        assert len(worker["affinity"]) == 1


def test_clamping_runs_as_many_workers_as_fit():
    backend = PinnedBackend(oversubscribe="clamp")
    assert backend.effective_n_jobs(len(ALLOWED) + 5) == len(ALLOWED)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cores_per_worker": 0}, "cores_per_worker must be a positive integer or 'auto'"),
        ({"reserve": "x"}, "reserve: invalid CPU list 'x'"),
        ({"reserve": [-1]}, "reserve must hold CPU numbers .non-negative integers."),
        ({"oversubscribe": "maybe"}, "oversubscribe must be one of 'clamp', 'error', 'share'"),
        ({"claim_timeout": -1}, "claim_timeout must be a finite number of seconds >= 0; got -1"),
        ({"inner_max_num_threads": 0}, "inner_max_num_threads must be a positive integer"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with (
        pytest.raises(ValueError, match=message.replace("(", r"\(")),
        parallel_config(backend="pinned", **kwargs),
    ):
        pass


def test_unknown_reserved_cpu_is_named():
    with pytest.raises(PlanError, match="reserve names CPUs 4096"):
        Parallel(n_jobs=2, backend="pinned", reserve=[4096])(delayed(report)() for _ in range(2))


def test_inner_max_num_threads_never_exceeds_the_slot():
    with parallel_config(backend="pinned", n_jobs=2, inner_max_num_threads=8):
        reports = Parallel()(delayed(report)(0.3) for _ in range(6))
    assert_pinned_and_capped(reports, 2)


def test_inner_max_num_threads_passed_to_parallel_caps_the_workers():
    # Parallel(backend=..., inner_max_num_threads=T) reaches the backend's configure(), not
    # its constructor (loky ignores it there); workers of every core are capped to T, BLAS
    # and scikit-learn's OpenMP runtime alike.
    with pytest.warns(OversubscriptionWarning):
        reports = Parallel(
            n_jobs=2,
            backend="pinned",
            cores_per_worker=len(ALLOWED),
            oversubscribe="share",
            inner_max_num_threads=1,
        )(delayed(report)(0.3, True) for _ in range(6))
    for worker in worker_reports(reports):
        assert worker["affinity"] == ALLOWED
        assert openmp_threads(worker) == blas_threads(worker) == {1}
        assert worker["env"]["OPENBLAS_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="inner_max_num_threads must be a positive integer"):
        Parallel(n_jobs=2, backend="pinned", inner_max_num_threads=0)(delayed(report)())


INNER_BACKENDS = [None, "loky", "threading", "multiprocessing", "pinned"]
#: joblib refuses to nest its "multiprocessing" backend under loky (so under "pinned"): it
#: runs the call inline, with this warning.
MULTIPROCESSING_NOT_NESTED = "Multiprocessing-backed parallel loops cannot be nested, below loky"


def assert_created_within(result, cores):
    """Every thread and process created under a worker ran only on ``cores``."""
    for tid, cpus in result["threads"].items():
        assert set(cpus) <= set(cores), f"thread {tid} on {cpus}, worker on {cores}"
    for pid, cpus in result["children"].items():
        assert set(cpus) <= set(cores), f"process {pid} on {cpus}, worker on {cores}"


@pytest.mark.parametrize("inner_backend", INNER_BACKENDS)
def test_nested_inside_a_one_core_worker_creates_no_thread_or_process(inner_backend):
    # Outer: 2 workers of 1 core. An inner Parallel(n_jobs=-1), whatever its backend, sees
    # one core, so it runs inline: not one thread or process is created under the worker.
    # (Fixed slots: a task that outlives its sibling's would borrow the idle core, and its
    # OpenBLAS would start a helper thread there; tests/test_lending.py covers that.)
    results = Parallel(n_jobs=2, backend="pinned", fixed_slots=True)(
        delayed(nested)(inner_backend, openmp=True) for _ in range(2)
    )
    for result in results:
        outer = result["outer"]
        assert len(outer["affinity"]) == 1
        assert (result["threads"], result["children"]) == ({}, {}), inner_backend
        assert (result["peak_threads"], result["peak_children"]) == (0, 0)
        assert {(r["pid"], r["tid"]) for r in result["inner"]} == {(outer["pid"], outer["tid"])}
        for inner in result["inner"]:
            assert inner["affinity"] == outer["affinity"]
            assert blas_threads(inner) == openmp_threads(inner) == {1}
        expected = [MULTIPROCESSING_NOT_NESTED] if inner_backend == "multiprocessing" else []
        assert [w[: len(MULTIPROCESSING_NOT_NESTED)] for w in result["warnings"]] == expected


@pytest.mark.parametrize("inner_backend", INNER_BACKENDS)
def test_nested_inside_a_multi_core_worker_stays_on_its_cores(inner_backend):
    # Outer: 2 workers owning every allowed core (sharing them, on purpose). An inner
    # Parallel(n_jobs=-1) starts at most one process or task thread per core of the worker,
    # and every thread and process it creates runs on the worker's cores only.
    with pytest.warns(OversubscriptionWarning):
        results = Parallel(
            n_jobs=2, backend="pinned", cores_per_worker=len(ALLOWED), oversubscribe="share"
        )(delayed(nested)(inner_backend, openmp=True) for _ in range(2))
    for result in results:
        outer = result["outer"]
        cores = outer["affinity"]
        assert cores == ALLOWED
        assert blas_threads(outer) == openmp_threads(outer) == {len(cores)}
        assert_created_within(result, cores)
        inner_pids = {r["pid"] for r in result["inner"]}
        inner_tids = {r["tid"] for r in result["inner"]}
        if inner_backend == "multiprocessing":
            assert [w[: len(MULTIPROCESSING_NOT_NESTED)] for w in result["warnings"]] == [
                MULTIPROCESSING_NOT_NESTED
            ]
            assert (result["peak_threads"], result["children"]) == (0, {})
            assert inner_tids == {outer["tid"]}
            continue
        assert result["warnings"] == []
        # Besides the task threads, joblib's ThreadPool (task and result handlers) or loky's
        # executor (manager thread, queue feeder) add at most 3 bookkeeping threads.
        assert result["peak_threads"] <= len(cores) + 3
        if inner_backend == "threading":
            assert inner_pids == {outer["pid"]}
            assert result["children"] == {}
            assert len(inner_tids) <= len(cores)
            assert inner_tids <= set(result["threads"])
            continue
        # A process pool: the tasks ran in processes created for it, one per core at most.
        assert inner_pids <= set(result["children"])
        assert result["peak_children"] <= len(cores)
        sub_workers = worker_reports(result["inner"])
        if inner_backend == "loky":
            # loky does not pin (its workers inherit the worker's mask), and would hand the
            # worker's caps (OPENBLAS_NUM_THREADS=cores) unchanged to each of its n_jobs=-1
            # (one per core) workers; inside a slot each gets its share: 1 thread.
            for worker in sub_workers:
                assert worker["affinity"] == cores
                assert blas_threads(worker) == openmp_threads(worker) == {1}
        else:  # the nested default is "pinned": sub-workers split the worker's cores
            slots = [cpu for worker in sub_workers for cpu in worker["affinity"]]
            assert sorted(slots) == sorted(set(slots)) and set(slots) <= set(cores)
            for worker in sub_workers:
                assert thread_masks(worker) == {tuple(worker["affinity"])}
                assert blas_threads(worker) == openmp_threads(worker) == {1}


def test_openmp_is_capped_to_the_slot():
    # scikit-learn's OpenMP runtime (libgomp), loaded inside the worker, is capped to the
    # slot's size (below the slot: see the inner_max_num_threads test above).
    reports = Parallel(n_jobs=2, backend="pinned")(delayed(report)(0.3, True) for _ in range(4))
    for worker in worker_reports(reports):
        assert openmp_threads(worker) == {len(worker["affinity"])} == {1}


def test_auto_sized_pools_inside_a_worker_see_the_slot():
    (result,) = Parallel(n_jobs=2, backend="pinned")(delayed(pool_size_inside)() for _ in range(1))
    assert result["os_cpu_count"] == result["joblib_cpu_count"] == result["mp_pool"] == 1


def test_crashed_workers_are_replaced_on_free_slots():
    for how in ("exit", "segfault", "sigkill"):
        with pytest.raises(TerminatedWorkerError):
            Parallel(n_jobs=2, backend="pinned")(delayed(die)(how) for _ in range(2))
        reports = Parallel(n_jobs=2, backend="pinned")(delayed(report)(0.3) for _ in range(6))
        assert_pinned_and_capped(reports, 2)


def test_worker_killed_from_outside():
    with Parallel(n_jobs=2, backend="pinned") as parallel:
        victim = parallel(delayed(report)(0.3) for _ in range(4))[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(TerminatedWorkerError):
            parallel(delayed(report)(0.5) for _ in range(4))
    reports = Parallel(n_jobs=2, backend="pinned")(delayed(report)(0.3) for _ in range(6))
    assert victim not in {r["pid"] for r in reports}
    assert_pinned_and_capped(reports, 2)


def test_idle_workers_that_time_out_get_a_slot_again():
    with parallel_config(backend="pinned", n_jobs=2, idle_worker_timeout=1):
        first = worker_reports(Parallel()(delayed(report)(0.3) for _ in range(6)))
        time.sleep(3)  # the workers exit after one idle second, dropping their leases
        assert not any(psutil.pid_exists(w["pid"]) for w in first)
        assert list_leases(scope=None) == []
        again = Parallel()(delayed(report)(0.3) for _ in range(6))
    assert_pinned_and_capped(again, 2)


def test_two_level_nesting_subdivides_a_slot():
    # Level 0 needs workers owning several cores; on a 2-core machine that means two
    # workers sharing all cores (joblib runs a 1-worker pool inline). Level 1: a pinned
    # Parallel(n_jobs=-1) in each worker splits the worker's own cores between sub-workers.
    # Level 2: the nested default inside each 1-core sub-worker runs inline.
    with pytest.warns(OversubscriptionWarning):
        results = Parallel(
            n_jobs=2, backend="pinned", cores_per_worker=len(ALLOWED), oversubscribe="share"
        )(delayed(two_levels)(openmp=True) for _ in range(2))
    for result in results:
        outer = result["outer"]
        assert outer["affinity"] == ALLOWED
        assert blas_threads(outer) == openmp_threads(outer) == {len(ALLOWED)}
        sub_workers = worker_reports([level1["outer"] for level1 in result["inner"]])
        # Exactly one sub-worker per core of the worker, each pinned to its own core, and
        # no other process created under the worker.
        assert sorted(tuple(w["affinity"]) for w in sub_workers) == [(c,) for c in ALLOWED]
        assert set(result["children"]) == {w["pid"] for w in sub_workers}
        assert result["peak_children"] == len(ALLOWED)
        # The level-0 worker runs no task itself: it adds loky's bookkeeping threads only.
        assert_created_within(result, ALLOWED)
        assert result["peak_threads"] <= 3
        for worker in sub_workers:
            assert thread_masks(worker) == {tuple(worker["affinity"])}
            assert blas_threads(worker) == openmp_threads(worker) == {1}
        for level1 in result["inner"]:
            # Level 2 ran inline in the sub-worker: no process, no thread added.
            assert (level1["threads"], level1["children"]) == ({}, {})
            assert (level1["peak_threads"], level1["peak_children"]) == (0, 0)
            assert {r["pid"] for r in level1["inner"]} == {level1["outer"]["pid"]}
            for level2 in level1["inner"]:
                assert level2["affinity"] == level1["outer"]["affinity"]
                assert blas_threads(level2) == openmp_threads(level2) == {1}


def test_loky_features_are_kept():
    # Generators, timeouts, errors from tasks, lambdas, and memory-mapped large arrays.
    out = Parallel(n_jobs=2, backend="pinned", return_as="generator_unordered")(
        delayed(lambda x: x * x)(i) for i in range(8)
    )
    assert sorted(out) == [i * i for i in range(8)]
    with pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, backend="pinned", timeout=0.5)(delayed(time.sleep)(3) for _ in range(2))
    with pytest.raises(ZeroDivisionError):
        Parallel(n_jobs=2, backend="pinned")(delayed(lambda x: 1 / x)(i) for i in range(4))
    big = np.ones(2_000_000)
    kinds = Parallel(n_jobs=2, backend="pinned", max_nbytes="1M")(
        delayed(lambda a: type(a).__name__)(big) for _ in range(2)
    )
    assert kinds == ["memmap", "memmap"]
    assert Parallel(n_jobs=2, backend="pinned")(delayed(blas_product)() for _ in range(2))


@pytest.mark.parametrize("how", ["leased by another job", "reserved"])
def test_one_free_core_still_runs_in_a_pinned_worker_not_inline(how):
    # joblib runs a 1-worker call inline in the caller, whose affinity spans every CPU: it
    # would run on the daemon's core. pinbackend keeps one pinned worker instead.
    daemon_cpu, free_cpu = ALLOWED[-1], ALLOWED[0]
    kwargs = {"reserve": [c for c in ALLOWED if c != free_cpu]} if how == "reserved" else {}
    holder = claim(set(ALLOWED) - {free_cpu}, command="daemon") if how != "reserved" else None
    try:
        backend = PinnedBackend(**kwargs)
        assert backend.effective_n_jobs(-1) == 2  # what joblib is told, to stay off inline
        reports = Parallel(n_jobs=-1, backend="pinned", **kwargs)(
            delayed(report)(0.1) for _ in range(4)
        )
    finally:
        if holder is not None:
            holder.release()
    (worker,) = worker_reports(reports)
    assert worker["pid"] != os.getpid()
    assert worker["affinity"] == [free_cpu]
    assert thread_masks(worker) == {(free_cpu,)}
    assert blas_threads(worker) == {1}
    assert daemon_cpu not in worker["affinity"]
