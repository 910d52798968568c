"""Dask integration on real clusters: LocalCluster and separate scheduler/worker processes.

Everything is read back from inside tasks: each thread's CPU mask from /proc and the pool
sizes threadpoolctl sees in the task thread. The machine may have only two cores, so the
layouts are 2 workers x 1 thread (slots {0} and {1}) and 1 worker x 2 threads (slot {0,1}).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import _dask_probes as probes  # noqa: E402
from _helpers import needs_seccomp  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from pinbackend.core.cpuset import format_cpu_list  # noqa: E402
from pinbackend.dask import (  # noqa: E402
    PinPlugin,
    PinWorkerPlugin,
    WorkerPlacement,
    format_placement,
    placement,
)
from pinbackend.host.holders import list_leases  # noqa: E402
from pinbackend.host.leases import claim  # noqa: E402
from pinbackend.host.machine import read_topology  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(150)]

TESTS = Path(__file__).parent
ROOT = TESTS.parent
ALL_CPUS = frozenset(os.sched_getaffinity(0))
CORES = read_topology().restrict(ALL_CPUS).cores  # physical cores, SMT siblings together
needs_two_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs 2 allowed physical cores")


@pytest.fixture(autouse=True)
def restore_environ():
    """LocalCluster's nannies run in this process and put their pre-spawn variables
    (OMP_NUM_THREADS, ...) into its environment; put the environment back afterwards."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@contextlib.contextmanager
def local_cluster(**kwargs):
    """A LocalCluster of worker processes on 127.0.0.1, and a client; closed on exit."""
    options = dict(
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # Without a dashboard the scheduler still serves /metrics, by default on port 8787:
        # an ephemeral port instead, so that clusters of other test runs never collide.
        scheduler_kwargs={"dashboard_address": ":0"},
        worker_dashboard_address=None,
        n_workers=2,
        threads_per_worker=1,
    )
    options.update(kwargs)
    with LocalCluster(**options) as cluster, Client(cluster, timeout=60) as client:
        yield cluster, client


def reports(client, fn=probes.task_report, *args) -> dict[str, dict]:
    """Run ``fn`` once on every worker (in a task thread); return worker -> result."""
    futures = {
        address: client.submit(fn, *args, workers=[address], pure=False)
        for address in client.nthreads()
    }
    return dict(zip(futures, client.gather(list(futures.values())), strict=True))


def assert_pinned_disjoint(results: dict[str, dict], nthreads: int = 1) -> list[frozenset]:
    """Every thread of every worker on its slot, slots disjoint, BLAS cap = slot / nthreads."""
    slots = []
    for report in results.values():
        slot = frozenset(report["pin"]["cores"])
        assert report["pin"]["pinned"] is True
        assert {frozenset(cpus) for cpus in report["threads"].values()} == {slot}
        assert frozenset(report["task_thread"]["mask"]) == slot
        assert set(report["task_thread"]["blas"]) == {len(slot) // nthreads}
        slots.append(slot)
    assert sum(len(s) for s in slots) == len(frozenset().union(*slots)), slots
    return slots


def assert_slots(slots: list[frozenset], count: int, cores_each: int) -> None:
    """``count`` slots of ``cores_each`` whole physical cores (on two cores: {0} and {1})."""
    assert len(slots) == count, slots
    for slot in slots:
        cores = [core for core in CORES if core & slot]
        assert all(core <= slot for core in cores) and len(cores) == cores_each, slot


def wait_until(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def assert_leases_match_workers(client) -> None:
    leases = list_leases(scope=None)
    assert {lease.pid for lease in leases} == worker_pids(client)
    assert len(leases) == len(client.nthreads())


@needs_two_cores
def test_local_cluster_two_workers_get_disjoint_pinned_slots():
    with local_cluster(n_workers=1) as (cluster, client):
        client.register_plugin(PinPlugin())
        client.register_plugin(PinPlugin(cores_per_worker=2))  # idempotent: ignored
        cluster.scale(2)  # a worker joining after registration is pinned too
        client.wait_for_workers(2, timeout=60)
        results = reports(client)
        assert_slots(assert_pinned_disjoint(results), count=2, cores_each=1)
        assert all(r["pin"]["source"] == "pinbackend" for r in results.values())
        plugins = client.run(
            lambda dask_worker: [n for n in dask_worker.plugins if "pinbackend" in n]
        )
        assert list(plugins.values()) == [["pinbackend"], ["pinbackend"]]
        assert_leases_match_workers(client)
        view = placement(client)
        slots_seen_by_tasks = sorted(tuple(r["pin"]["cores"]) for r in results.values())
        assert sorted(p.cores for p in view) == slots_seen_by_tasks
        assert all(p.pinned and p.threads_on_slot is True for p in view)
        assert [p.blas_threads for p in view] == [len(p.cores) for p in view]
        text = format_placement(view)
        assert "2 pinned" in text and text.count(" yes") == 2
        # Removing the plugin releases the slots and gives the threads their CPUs back.
        client.unregister_worker_plugin("pinbackend")
        assert not list_leases(scope=None)
        for report in reports(client).values():
            assert report["pin"] is None
            assert {frozenset(c) for c in report["threads"].values()} == {ALL_CPUS}
        # With the other two halves gone too, a new registration (other options) applies.
        client.unregister_worker_plugin("pinbackend-nanny", nanny=True)
        client.unregister_scheduler_plugin("pinbackend")
        client.register_plugin(PinPlugin(cores_per_worker=1, oversubscribe="share"))
        again = reports(client)
        assert_slots(assert_pinned_disjoint(again), count=2, cores_each=1)
        assert {r["pin"]["options"] for r in again.values()} == {
            PinPlugin(cores_per_worker=1, oversubscribe="share").options.describe()
        }


@needs_two_cores
def test_unpinning_a_worker_puts_back_what_its_slot_changed():
    """The worker half's teardown is the one release: read in the worker, its threads' CPUs
    (one started inside the slot too), BLAS and OpenMP sizes, the slot's variables and
    ``os.cpu_count()`` are as before the slot, and its lease is gone."""
    with local_cluster(n_workers=1) as (_cluster, client):
        (before,) = client.run(probes.slot_effects, 3).values()
        client.register_plugin(PinWorkerPlugin())
        (during,) = client.run(probes.slot_effects, None, True).values()
        client.unregister_worker_plugin("pinbackend")
        (after,) = client.run(probes.slot_effects).values()
        assert not list_leases(scope=None)
    (slot,) = {tuple(mask) for mask in during["masks"].values()}
    assert len(slot) == 1 and str(during["late"][0]) in during["masks"]
    assert {size for _, size in during["pools"]} == {1}
    assert during["env"]["PINBACKEND_SLOT"] and during["cpu_count"] == 1
    assert {tuple(pool) for pool in before["pools"]} >= {("blas", 3), ("openmp", 3)}
    assert after["pools"] == before["pools"]
    assert after["env"] == before["env"] and "PINBACKEND_SLOT" not in after["env"]
    assert after["cpu_count"] == before["cpu_count"] != 1
    assert {frozenset(mask) for mask in after["masks"].values()} == {ALL_CPUS}
    assert str(during["late"][0]) in after["masks"]


@needs_two_cores
@needs_seccomp
def test_placement_without_readable_thread_masks_is_not_shown_as_pinned():
    with local_cluster(n_workers=1) as (_cluster, client):
        client.register_plugin(PinPlugin())
        (control,) = placement(client)
        blind = WorkerPlacement(
            **client.submit(probes.placement_with_thread_masks_unreadable, pure=False).result()
        )
    # The same pinned worker: with the masks read it is verified, without them it is not.
    assert control.pinned and control.threads_on_slot is True and control.pid == blind.pid
    assert blind.pinned is True and blind.threads_on_slot is None
    assert blind.cpus == blind.cores  # the measuring thread's own mask stands in
    text = format_placement([blind])
    assert text.splitlines()[2].split()[-1] == "unknown"
    assert "1 worker(s) on 1 host(s), 0 pinned." in text
    assert f"could not be read (/proc/{blind.pid}/task), so its pinning is not verified" in text


@needs_two_cores
def test_openmp_cap_holds_in_every_task_thread_not_only_the_main_thread():
    # libgomp is loaded before the plugin runs, with OMP_NUM_THREADS=3 in the environment:
    # a cap applied from the worker's main thread alone would leave the task threads at 3.
    with local_cluster(
        n_workers=1,
        threads_per_worker=2,
        env={"OMP_NUM_THREADS": "3"},
        preload=["sklearn.utils._openmp_helpers"],
    ) as (_cluster, client):
        # The worker half alone: PinPlugin's nanny half would restart the worker with the
        # cap in its environment, and this test could no longer fail.
        client.register_plugin(PinPlugin().worker_plugin())
        futures = [
            client.submit(probes.concurrent_task_report, 2, True, pure=False) for _ in range(2)
        ]
        results = client.gather(futures)
        assert len({r["task_thread"]["tid"] for r in results}) == 2
        slot = frozenset(results[0]["pin"]["cores"])
        cap = len(slot) // 2  # 2 task threads: 1 on two cores without SMT
        assert cap != 3
        for report in results:
            assert report["pin"]["task_thread_cap"] == cap
            assert {frozenset(c) for c in report["threads"].values()} == {slot}
            assert set(report["task_thread"]["blas"]) == {cap}
            assert report["task_thread"]["openmp"] == [cap]
        # Threads a task starts itself keep the default OpenMP read when it loaded: that is
        # what the nanny half fixes (next test). Shown here so the test above can fail.
        assert client.submit(probes.openmp_in_thread_started_by_task).result() == [3]


@needs_two_cores
@pytest.mark.parametrize("how", ["one-registration", "halves-before-workers", "preload-nanny"])
def test_nanny_part_sets_thread_caps_before_the_worker_process_starts(how):
    cluster_options = dict(n_workers=1 if how == "one-registration" else 0)
    if how == "preload-nanny":
        cluster_options.update(
            preload_nanny=["pinbackend"], preload_nanny_argv=["--pin-cores-per-worker", "2"]
        )
    with local_cluster(threads_per_worker=1, **cluster_options) as (cluster, client):
        plugin = PinPlugin(cores_per_worker=2)
        if how == "one-registration":
            # The worker runs already, spawned with distributed's 1: the nanny half restarts
            # it with the cap in its environment, before the worker half pins it.
            (first_pid,) = worker_pids(client)
            client.register_plugin(plugin)
            assert worker_pids(client) != {first_pid}
        elif how == "halves-before-workers":
            client.register_plugin(plugin.nanny_plugin())  # as before one registration
            client.register_plugin(plugin.worker_plugin())
        else:
            client.register_plugin(plugin)
        cluster.scale(1)
        client.wait_for_workers(1, timeout=60)
        (environ,) = reports(client, probes.initial_environ).values()
        (report,) = reports(client, probes.task_report, True).values()
        (slot,) = assert_pinned_disjoint({"worker": report})
        assert_slots([slot], count=1, cores_each=2)
        # distributed's own default before the spawn is 1; 1 task thread gets the whole slot.
        assert environ["OPENBLAS_NUM_THREADS"] == environ["OMP_NUM_THREADS"] == str(len(slot))
        assert report["task_thread"]["openmp"] == [len(slot)]
        assert client.submit(probes.openmp_in_thread_started_by_task).result() == [len(slot)]


@needs_two_cores
def test_restarted_and_killed_workers_are_pinned_again_without_leaking_slots(tmp_path):
    with local_cluster() as (_cluster, client):
        client.register_plugin(PinPlugin())
        seen_pids = worker_pids(client)
        for _ in range(2):
            client.restart()
            pids = worker_pids(client)
            assert not pids & seen_pids
            seen_pids |= pids
            assert_slots(assert_pinned_disjoint(reports(client)), count=2, cores_each=1)
            assert_leases_match_workers(client)
        victim, survivor = sorted(client.nthreads())
        before = reports(client)
        victim_pid, survivor_pid = before[victim]["pid"], before[survivor]["pid"]
        victim_slot = frozenset(before[victim]["pin"]["cores"])
        marker = tmp_path / "killed"
        future = client.submit(
            probes.kill_own_worker_once,
            str(marker),
            workers=[victim],
            allow_other_workers=True,  # the victim's address is gone for good: retry anywhere
            pure=False,
        )
        retry = future.result(timeout=60)
        assert marker.exists()
        # The retry ran in a live, pinned process, not in the one the first attempt killed.
        assert retry["pid"] != victim_pid and retry["pin"]["pinned"] is True
        assert {frozenset(c) for c in retry["threads"].values()} == {
            frozenset(retry["pin"]["cores"])
        }
        wait_until(
            lambda: len(client.nthreads()) == 2 and victim not in client.nthreads(),
            what="the nanny to restart the killed worker",
        )
        # The survivor kept its process; the victim's nanny started a process never seen.
        (replacement_pid,) = worker_pids(client) - {survivor_pid}
        assert survivor_pid in worker_pids(client)
        assert replacement_pid != victim_pid and replacement_pid not in seen_pids
        after = reports(client)
        assert_slots(assert_pinned_disjoint(after), count=2, cores_each=1)
        # The killed worker's slot was freed by the kernel and claimed by its replacement.
        (replacement,) = (r for r in after.values() if r["pid"] == replacement_pid)
        assert frozenset(replacement["pin"]["cores"]) == victim_slot
        assert_leases_match_workers(client)


@needs_two_cores
def test_joblib_dask_backend_runs_each_task_inside_its_workers_slot():
    joblib = pytest.importorskip("joblib")
    with local_cluster() as (_cluster, client):
        client.register_plugin(PinPlugin())
        with joblib.parallel_config(backend="dask"):
            results = joblib.Parallel(n_jobs=2)(
                joblib.delayed(probes.task_report)() for _ in range(8)
            )
    by_pid: dict[int, list[dict]] = {}
    for report in results:
        by_pid.setdefault(report["pid"], []).append(report)
    slots = []
    for group in by_pid.values():
        slot = frozenset(group[0]["pin"]["cores"])
        slots.append(slot)
        for report in group:
            assert frozenset(report["task_thread"]["mask"]) == slot
            assert set(report["task_thread"]["blas"]) == {1}
    assert len(slots) == len(set(slots)) and all(len(s) == 1 for s in slots)


@needs_two_cores
def test_worker_whose_cores_another_job_holds_waits_the_claim_timeout_then_closes():
    with local_cluster(n_workers=1) as (_cluster, client):
        with claim(ALL_CPUS, command="the test holds every core"):
            start = time.monotonic()
            client.register_plugin(PinPlugin(claim_timeout=1))  # no exception: policy clamp
            assert 1 <= time.monotonic() - start < 8
            wait_until(lambda: not client.nthreads(), what="the closed worker to leave")
            (row,) = placement(client)
        time.sleep(1)  # its nanny closed too: nothing restarts it
        assert not client.nthreads()
    assert (row.outcome, row.running, row.pinned) == ("closed", False, False)
    host = f"this host's {len(CORES)} cores (CPUs {format_cpu_list(ALL_CPUS)})"
    assert row.note.startswith(f"no worker x 1 thread fits {host}"), row.note
    assert f"other jobs hold CPUs {format_cpu_list(ALL_CPUS)}" in row.note
    assert "the test holds every core" in row.note
    text = format_placement([row])
    assert "1 worker(s) on 1 host(s), 0 pinned, 1 closed." in text


def refusals(client) -> list[str]:
    """Workers that logged closing because pinbackend refused them (scheduler events)."""
    return [
        topic
        for topic, events in client.get_events().items()
        for _, event in events
        if isinstance(event, dict) and event.get("reason") == "pinbackend-pinning-refused"
    ]


@needs_two_cores
def test_worker_restarted_by_its_nanny_closes_when_no_core_is_free(tmp_path, capfd):
    # A restarted worker gets the plugin from the scheduler as it registers, where a failing
    # setup is only logged: the plugin itself must close it. The gate holds the new process
    # before it registers, so the test takes the freed cores without racing it.
    gate = tmp_path / "gate"
    gate.touch()
    gated = dict(preload=["_dask_probes"], env={probes.GATE_ENV: str(gate)})
    with local_cluster(n_workers=1, **gated) as (cluster, client):
        client.register_plugin(PinPlugin(claim_timeout=0.5))
        ((first_address, first),) = reports(client).items()
        assert first["pin"]["pinned"] is True
        gate.unlink()
        client.run(probes.kill_own_process, wait=False)
        with claim(ALL_CPUS, timeout=30, command="the test holds every core"):
            queued = client.submit(probes.record_run, str(tmp_path / "ran"), pure=False)
            gate.touch()  # the replacement registers, gets the PinPlugin and refuses
            wait_until(lambda: refusals(client), timeout=20, what="the replacement to refuse")
            (nanny,) = cluster.workers.values()
            wait_until(lambda: nanny.status.name == "closed", what="its nanny to close")
            time.sleep(1)  # nothing restarts it
            assert not client.nthreads()
        # No task ran in the replacement, pinned or not: the queued one is still waiting.
        assert queued.status == "pending" and not (tmp_path / "ran").exists()
        (refused,) = refusals(client)  # the replacement, not the first worker
        assert refused != first_address
    # LocalCluster workers log warnings and errors to this process's stderr.
    lines = [line for line in capfd.readouterr().err.splitlines() if "pinbackend - " in line]
    assert len(lines) == 1 and "pinbackend - WARNING" in lines[0], lines
    assert f"no worker x 1 thread fits this host's {len(CORES)} cores" in lines[0]
    assert "the test holds every core" in lines[0]
    assert "#dask-workers-closed" in lines[0]


@needs_two_cores
def test_fail_open_worker_warns_once_and_reports_itself_unpinned():
    with local_cluster(n_workers=1) as (_cluster, client):
        client.register_plugin(PinPlugin(fail="open", reserve=ALL_CPUS))
        (row,) = placement(client)
        assert not row.pinned and row.cores is None and row.outcome == "unpinned"
        assert "cannot fit" in row.reason
        assert f"reserved {format_cpu_list(ALL_CPUS)}" in row.reason
        assert "NO" in format_placement([row]) and "unpinned:" in format_placement([row])
        (logs,) = client.get_worker_logs().values()
        warnings = [msg for level, msg in logs if "runs UNPINNED" in msg]
        assert len(warnings) == 1 and "#dask-worker-runs-unpinned" in warnings[0]
        assert not list_leases(scope=None)


def test_workers_sharing_the_clients_process_are_never_pinned():
    before = os.sched_getaffinity(0)
    with local_cluster(processes=False, n_workers=1, host=None) as (_cluster, client):
        client.register_plugin(PinPlugin(fail="open"))
        (row,) = placement(client)
    assert not row.pinned and "shares its process" in row.reason
    assert os.sched_getaffinity(0) == before
    assert not list_leases(scope=None)


@needs_two_cores
def test_preload_through_config_wins_over_a_plugin_registered_later():
    import dask

    with (
        dask.config.set(
            {
                "distributed.worker.preload": ["pinbackend"],
                "distributed.worker.preload-argv": ["--pin-fail", "open"],
            }
        ),
        local_cluster() as (_cluster, client),
    ):
        client.register_plugin(PinPlugin(cores_per_worker=2))
        results = reports(client)
        logs = client.get_worker_logs()
    assert_slots(assert_pinned_disjoint(results), count=2, cores_each=1)
    assert {r["pin"]["source"] for r in results.values()} == {"pinbackend-preload"}
    for lines in logs.values():
        assert sum("already set up by pinbackend-preload" in msg for _, msg in lines) == 1


# --- separate `dask scheduler` / `dask worker` processes -------------------------------


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _child_env() -> dict[str, str]:
    paths = [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _spawn(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a ``dask`` command line with the test's import path; output on one pipe."""
    return subprocess.Popen(
        command,
        env=_child_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen) -> str:
    """Wait for a process to exit (terminate it after a while); return its output."""
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            out, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
    return out


@contextlib.contextmanager
def scheduler_process(tmp_path):
    """``dask scheduler`` on 127.0.0.1, an ephemeral port, no dashboard."""
    scheduler_file = tmp_path / "scheduler.json"
    process = _spawn(
        [
            *(_script("dask"), "scheduler", "--host", "127.0.0.1", "--port", "0"),
            *("--no-dashboard", "--dashboard-address", ":0"),
            *("--scheduler-file", str(scheduler_file)),
        ]
    )
    try:
        wait_until(scheduler_file.exists, what="the scheduler to start")
        wait_until(lambda: "address" in scheduler_file.read_text(), what="the scheduler file")
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        if process.poll() is None:
            process.terminate()
        _stop(process)


def worker_command(entry_point: str, scheduler: str, *args: str) -> list[str]:
    """The worker command line; the scheduler address is positional on purpose: with
    ``--scheduler-file`` instead, dask's CLI takes the first pinbackend option for it."""
    command = (
        [_script("dask"), "worker"] if entry_point == "dask worker" else [_script(entry_point)]
    )
    return [
        *command,
        scheduler,
        "--host",
        "127.0.0.1",
        "--no-dashboard",
        "--death-timeout",
        "60",
        *args,
    ]


ENTRY_POINTS = [
    "dask worker",
    pytest.param(
        "dask-worker",
        marks=pytest.mark.skipif(
            not Path(_script("dask-worker")).exists(),
            reason="this distributed has no legacy dask-worker command (removed upstream); "
            "tox -e dask-legacy runs it",
        ),
    ),
]


@needs_two_cores
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_dask_worker_nworkers_2_with_preload_pins_disjoint_slots(tmp_path, entry_point):
    with scheduler_process(tmp_path) as scheduler:
        worker = _spawn(
            [
                *worker_command(entry_point, scheduler, "--nworkers", "2", "--nthreads", "1"),
                *("--preload", "pinbackend", "--claim-timeout", "20"),
            ]
        )
        try:
            with Client(scheduler, timeout=60) as client:
                client.wait_for_workers(2, timeout=90)
                results = reports(client)
                view = placement(client)
                client.shutdown()
        finally:
            output = _stop(worker)
    assert_slots(assert_pinned_disjoint(results), count=2, cores_each=1)
    assert {r["pin"]["source"] for r in results.values()} == {"pinbackend-preload"}
    assert all(p.pinned and p.threads_on_slot is True for p in view)
    assert output.count("pinned to CPUs") == 2, output


@needs_two_cores
@pytest.mark.parametrize(
    ("nanny", "worker", "nanny_argv"),
    [
        (False, True, None),
        (True, True, None),
        (True, True, ["--pin-cores-per-worker", "2"]),
        (True, False, ["--pin-cores-per-worker", "2"]),
    ],
    ids=["preload", "both-options-once", "both-nanny-options-too", "preload-nanny-alone"],
)
def test_dask_worker_with_a_two_core_slot_caps_task_threads_to_two(
    tmp_path, nanny, worker, nanny_argv
):
    # distributed's nanny spawns workers with OMP/MKL/OPENBLAS_NUM_THREADS=1, so a cap of 1
    # cannot tell pinbackend's work from distributed's: 1 task thread on a 2-core slot must
    # get 2 BLAS and 2 OpenMP threads, and only pinbackend can have set that.
    pytest.importorskip("sklearn")  # its wheels bundle GNU OpenMP
    env = _child_env()
    args = ["--nworkers", "1", "--nthreads", "1"]
    if nanny:
        args += ["--preload-nanny", "pinbackend"]
    if nanny_argv is not None:
        # dask worker gives nanny preloads their options from the configuration only.
        env["DASK_DISTRIBUTED__NANNY__PRELOAD_ARGV"] = json.dumps(nanny_argv)
    # GNU OpenMP loads as the worker starts, before pinbackend's preload: its default then
    # comes from the spawn environment alone (a later load would read pinbackend's).
    args += ["--preload", "sklearn.utils._openmp_helpers"]
    if worker:
        # The options after --preload pinbackend: the nanny preload reads them there.
        args += ["--preload", "pinbackend", "--cores-per-worker", "2"]
    with scheduler_process(tmp_path) as scheduler:
        process = _spawn(worker_command("dask worker", scheduler, *args), env=env)
        try:
            with Client(scheduler, timeout=60) as client:
                client.wait_for_workers(1, timeout=90)
                (environ,) = reports(client, probes.initial_environ).values()
                (report,) = reports(client, probes.task_report, True).values()
                started_by_task = client.submit(probes.openmp_in_thread_started_by_task).result()
                (view,) = placement(client)
                client.shutdown()
        finally:
            output = _stop(process)
    (slot,) = assert_pinned_disjoint({"worker": report})
    assert_slots([slot], count=1, cores_each=2)
    assert len(slot) == 2 and report["pin"]["task_thread_cap"] == 2
    assert set(report["task_thread"]["blas"]) == {2}  # threadpoolctl, inside the task
    assert report["task_thread"]["openmp"] == [2]
    assert (view.blas_threads, view.openmp_threads, view.threads_on_slot) == (2, 2, True)
    assert report["pin"]["source"] == "pinbackend-preload"
    # The nanny part: the worker process was spawned with 2, so that threads a task starts
    # itself take OpenMP's default of 2; without it they get distributed's 1 (while task
    # threads get 2 from the worker part either way, as asserted above).
    spawned_with = "2" if nanny else "1"
    assert environ["OMP_NUM_THREADS"] == environ["OPENBLAS_NUM_THREADS"] == spawned_with
    assert started_by_task == [int(spawned_with)]
    assert ("starts workers with" in output) == nanny, output
    assert output.count("pinned to CPUs") == 1, output
    warnings = [line for line in output.splitlines() if "pinbackend - WARNING" in line]
    assert not warnings, warnings


@needs_two_cores
@pytest.mark.parametrize("cause", ["cores-held", "all-reserved"])
def test_dask_worker_that_gets_no_slot_ends_with_one_line(tmp_path, cause):
    # No free core (another job holds them): the policy (clamp) closes it, with a warning.
    # No slot can ever fit (every CPU reserved): fail=closed refuses it, with an error.
    # Either way it registers and closes like any worker: no traceback of a failed start.
    args = ["--nthreads", "1", "--preload", "pinbackend", "--claim-timeout", "0.3"]
    if cause == "all-reserved":
        args += ["--reserve", format_cpu_list(ALL_CPUS)]
        held, level, says = contextlib.nullcontext(), "ERROR", "refuses to start (fail=closed)"
    else:
        held = claim(ALL_CPUS, command="the test holds every core")
        level, says = "WARNING", "the test holds every core"
    with scheduler_process(tmp_path) as scheduler, held:
        worker = _spawn(worker_command("dask worker", scheduler, *args))
        output = _exit_by_itself(worker)
    lines = [line for line in output.splitlines() if "pinbackend - " in line]
    assert len(lines) == 1 and f"pinbackend - {level} - " in lines[0], output
    assert says in lines[0]
    assert "Traceback" not in output and "Nanny failed to start" not in output, output


def _exit_by_itself(process: subprocess.Popen, timeout: float = 30) -> str:
    """Wait for ``process`` to end on its own and return its output; fail if it does not
    (``dask worker`` exits 0 on SIGTERM too, so a return code cannot tell)."""
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout:g}s:\n{_stop(process)}") from None
    return out


@needs_two_cores
def test_dask_worker_joining_after_the_plugin_closes_when_no_core_is_free(tmp_path):
    # The worker gets the plugin as it registers, where distributed only logs a failing
    # setup: without the plugin closing it, it would run the queued task unpinned.
    with (
        scheduler_process(tmp_path) as scheduler,
        Client(scheduler, timeout=60) as client,
    ):
        client.register_plugin(PinPlugin(claim_timeout=0.5))
        queued = client.submit(probes.record_run, str(tmp_path / "ran"), pure=False)
        with claim(ALL_CPUS, command="the test holds every core"):
            worker = _spawn(worker_command("dask worker", scheduler, "--nthreads", "1"))
            output = _exit_by_itself(worker)  # its nanny closed too: nothing restarts it
        (refused,) = refusals(client)
        assert not client.nthreads()
        assert queued.status == "pending" and not (tmp_path / "ran").exists()
        (row,) = placement(client)
        assert (row.worker, row.outcome) == (refused, "closed")
    assert "Registered to:" in output, output  # it did join before closing
    lines = [line for line in output.splitlines() if re.search("pinbackend - (WARN|ERR)", line)]
    assert len(lines) == 1 and "pinbackend - WARNING" in lines[0], output
    assert "no worker x 1 thread fits this host's" in lines[0]
    assert "the test holds every core" in lines[0]
    assert "pinned to CPUs" not in output and "Traceback" not in output


@needs_two_cores
def test_dask_worker_with_fail_open_preload_runs_unpinned_and_says_why(tmp_path):
    # fail is for a worker that cannot be pinned at all: here no slot fits, every CPU is
    # reserved (cores other jobs hold are the policy's business, see the tests above).
    args = ["--nthreads", "1", "--preload", "pinbackend", "--fail", "open"]
    args += ["--pin-reserve", format_cpu_list(ALL_CPUS)]  # an old spelling beside a new one
    why = "reserved " + format_cpu_list(ALL_CPUS)
    with scheduler_process(tmp_path) as scheduler:
        worker = _spawn(worker_command("dask worker", scheduler, *args))
        try:
            with Client(scheduler, timeout=60) as client:
                client.wait_for_workers(1, timeout=60)
                (report,) = reports(client).values()
                (row,) = placement(client)
                client.shutdown()
        finally:
            output = _stop(worker)
    # It started and runs tasks, exactly as without pinbackend: every thread on every CPU.
    assert report["pin"]["pinned"] is False and report["pin"]["cores"] is None
    assert {frozenset(c) for c in report["threads"].values()} == {ALL_CPUS}
    assert (row.pinned, row.cores, row.cpus) == (False, None, tuple(sorted(ALL_CPUS)))
    assert row.source == "pinbackend-preload" and why in row.reason, row.reason
    text = format_placement([row])
    assert text.splitlines()[2].split()[-1] == "NO"
    assert f"{row.worker}: unpinned: {row.reason}" in text
    assert "1 worker(s) on 1 host(s), 0 pinned." in text
    # One warning, with the same reason and a link; nothing else from pinbackend.
    lines = [line for line in output.splitlines() if "pinbackend - " in line]
    assert len(lines) == 1 and " - WARNING - " in lines[0], output
    assert f"Dask worker {row.worker} runs UNPINNED (fail=open): {row.reason}" in lines[0]
    assert lines[0].endswith(
        "python -m pinbackend explain dask-worker-runs-unpinned "
        "(https://pinbackend.readthedocs.io/en/latest/troubleshooting/#dask-worker-runs-unpinned)"
    )


BAD_PRELOAD_OPTIONS = {
    # click's own FloatRange(min=0) let nan and inf through; PinOptions refused them in the
    # worker, distributed logged "Failed to start preload" and the worker ran unpinned.
    "nan": (["--pin-claim-timeout", "nan"], "--pin-claim-timeout must be a finite number"),
    "inf": (["--pin-claim-timeout", "inf"], "--pin-claim-timeout must be a finite number"),
    "empty-entry": (["--pin-reserve", "0,,1"], "an empty entry between commas"),
    "fraction": (["--pin-cores-per-worker", "1.5"], "a positive integer or 'auto'"),
    "choice": (["--pin-fail", "sometimes"], "'closed', 'open'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PRELOAD_OPTIONS))
def test_dask_worker_rejects_bad_preload_options_before_starting(tmp_path, case):
    # A real scheduler: a worker that started despite its options would join it and run
    # tasks unpinned (it would not end by itself: the test then fails with its output).
    args, says = BAD_PRELOAD_OPTIONS[case]
    with scheduler_process(tmp_path) as scheduler:
        worker = _spawn(worker_command("dask worker", scheduler, "--preload", "pinbackend", *args))
        output = _exit_by_itself(worker, timeout=60)
    assert worker.returncode == 2, output
    assert says in output and args[0] in output, output
    assert "Failed to start preload" not in output and "Registered to:" not in output


@pytest.mark.parametrize("half", ["worker", "nanny"])
def test_dask_worker_with_invalid_options_from_dask_config_refuses_to_start(tmp_path, half):
    # Options from Dask's configuration reach only the worker (or nanny) process, where
    # distributed parses them, logs a failure and starts the worker unpinned: no command
    # line checks them. The worker must refuse instead, saying why, and end by itself.
    env = _child_env()
    bad = json.dumps(["--pin-claim-timeout", "nan"])
    if half == "worker":
        env["DASK_DISTRIBUTED__WORKER__PRELOAD_ARGV"] = bad
        args = ["--preload", "pinbackend"]
    else:  # the nanny preload alone adds the worker preload, with the nanny's options
        env["DASK_DISTRIBUTED__NANNY__PRELOAD_ARGV"] = bad
        args = ["--preload-nanny", "pinbackend"]
    with scheduler_process(tmp_path) as scheduler:
        worker = _spawn(worker_command("dask worker", scheduler, "--nthreads", "1", *args), env)
        output = _exit_by_itself(worker, timeout=60)
    lines = [line for line in output.splitlines() if "pinbackend - " in line]
    assert len(lines) == 1 and "pinbackend - ERROR - " in lines[0], output
    assert "refuses to start: its pinbackend options are invalid: --pin-claim-timeout" in lines[0]
    assert "Failed to start preload" not in output and "pinned to CPUs" not in output, output
    assert "Traceback" not in output, output


# --- registration on distributed versions that still have register_worker_plugin ---------


@needs_two_cores
@pytest.mark.skipif(
    not hasattr(Client, "register_worker_plugin"),
    reason=f"distributed {distributed.__version__} removed Client.register_worker_plugin "
    "(2026.6); tox -e dask-legacy tests it on 2026.3",
)
def test_legacy_register_worker_plugin_pins_workers():
    # PinPlugin is a scheduler plugin (it registers its two halves): distributed registers
    # it as one, and says so.
    with local_cluster() as (_cluster, client):
        with (
            pytest.warns(DeprecationWarning, match="register_plugin"),
            pytest.warns(UserWarning, match="registering as a scheduler plugin instead"),
        ):
            client.register_worker_plugin(PinPlugin())
        assert_slots(assert_pinned_disjoint(reports(client)), count=2, cores_each=1)


@needs_two_cores
def test_dask_example_prints_the_placement_and_runs_pinned_tasks():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "dask_local.py")],
        env={**_child_env(), "PINBACKEND_EXAMPLE_SMALL": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "2 worker(s) on 1 host(s), 2 pinned." in result.stdout
    task_lines = [line for line in result.stdout.splitlines() if line.startswith("  pid ")]
    assert len(task_lines) == 4
    cpu_lists = {line.split("CPUs ")[1].split("]")[0] + "]" for line in task_lines}
    first, second = (frozenset(json.loads(cpus)) for cpus in cpu_lists)
    assert first and second and not first & second
