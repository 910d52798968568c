"""Dask beyond one machine, as it is deployed: one scheduler host and two worker hosts.

The hosts are network namespaces on this machine (:mod:`_netns`), each with its own address
and hostname. Each worker host also has its own CPU budget, a cpuset cgroup of one CPU
(host A the first CPU, host B a CPU of another physical core), and its own lease registry
(``PINBACKEND_RUNTIME_DIR``, a private directory). ``dask scheduler`` runs on the scheduler
host and ``dask worker --preload pinbackend`` on each worker host; the test process is the
client and reaches every host over the bridge. Everything is read back from inside tasks
(every thread's mask, the task thread's BLAS/OpenMP pools) and from each host's registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import _dask_probes as probes  # noqa: E402
from _netns import Host, network  # noqa: E402
from distributed import Client  # noqa: E402

from pinbackend.bench.cgroups import CgroupUnavailable, child_cgroup  # noqa: E402
from pinbackend.dask import format_placement, placement  # noqa: E402
from pinbackend.host.holders import list_leases  # noqa: E402
from pinbackend.host.machine import read_topology  # noqa: E402
from pinbackend.host.registry import REGISTRY_ENV  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(150)]

TESTS = Path(__file__).parent
ROOT = TESTS.parent
CORES = read_topology().restrict(frozenset(os.sched_getaffinity(0))).cores
WAIT = 60  # seconds, the bound of every wait for a process or a worker


@dataclass
class WorkerHost:
    """A worker host: its network namespace, its one-CPU cpuset and its lease registry."""

    host: Host
    cpu: int
    registry: Path
    cgroup_prefix: list[str]
    log: Path = field(init=False)

    def leases(self):
        """The leases this host's registry holds (read from this process)."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(REGISTRY_ENV, str(self.registry))
            return list_leases(scope=None)


@dataclass
class Deployment:
    scheduler_host: Host
    workers: dict[str, WorkerHost]
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, prefix: list[str], command: list[str], env=None):
        """Start ``command`` after ``prefix``, in a session of its own, output to a log."""
        log = self.logs / f"{name}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [*prefix, *command],
                env=_child_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its process group: the nanny and its worker
            )
        self.processes.append(process)
        return process, log


def _dask() -> str:
    return str(Path(sys.executable).parent / "dask")


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    paths = [str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return {**env, **(extra or {})}


def _wait_until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)
    return value


def _exited(process: subprocess.Popen) -> bool:
    """Whether the process ended, without reaping it: while it is not reaped, its pid (and
    so its process group's id) cannot be reused, and signalling the group stays safe."""
    if process.returncode is not None:
        return True
    waited = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return waited is not None and waited.si_pid == process.pid


def _end_all(processes: list[subprocess.Popen], grace: float = 5) -> None:
    """End the process groups this test started (each leader and what it spawned): a
    moment to exit on their own, then SIGTERM, then SIGKILL; reap the leaders."""

    def wait(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(map(_exited, processes)) and time.monotonic() < deadline:
            time.sleep(0.05)

    wait(grace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            if process.returncode is None:  # not reaped: the group id is still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
        wait(2 * grace)
    for process in processes:
        process.wait(timeout=WAIT)


def _log_tails(deployment: Deployment) -> str:
    parts = []
    for log in sorted(deployment.logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-40:]
        parts.append(f"--- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
    return "\n".join(parts)


@pytest.fixture
def deployment(tmp_path):
    """A scheduler host and two worker hosts with their CPUs and registries; everything
    made is removed on exit, whatever happened (processes first, then what they ran in)."""
    if len(CORES) < 2:
        pytest.skip("needs 2 allowed physical cores (one per worker host)")
    cpus = {"host-a": min(CORES[0]), "host-b": min(CORES[1])}
    logs = tmp_path / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(network("sched", "host-a", "host-b"))
        workers = {}
        for name, cpu in cpus.items():
            try:
                group = stack.enter_context(child_cgroup(cpus=str(cpu), tag=name))
            except CgroupUnavailable as error:
                pytest.skip(f"cannot make a cpuset cgroup here: {error}")
            registry = Path(tempfile.mkdtemp(prefix=f"pinbackend-registry-{name}-"))
            stack.callback(shutil.rmtree, registry, ignore_errors=True)
            registry.chmod(0o700)
            workers[name] = WorkerHost(net.hosts[name], cpu, registry, group.prefix())
        made = Deployment(net.hosts["sched"], workers, logs)
        try:
            yield made
        finally:
            _end_all(made.processes)
            print(_log_tails(made))  # shown with a failure


def _start_scheduler(deployment: Deployment, tmp_path: Path) -> str:
    host = deployment.scheduler_host
    scheduler_file = tmp_path / "scheduler.json"
    process, log = deployment.start(
        "scheduler",
        host.prefix(),
        [
            *(_dask(), "scheduler", "--host", host.address, "--port", "0"),
            *("--no-dashboard", "--dashboard-address", ":0"),
            *("--scheduler-file", str(scheduler_file)),
        ],
    )

    def address():
        assert process.poll() is None, f"the scheduler exited:\n{log.read_text()}"
        with contextlib.suppress(FileNotFoundError, ValueError):
            return json.loads(scheduler_file.read_text()).get("address")

    return _wait_until(address, "the scheduler to write its address")


def _start_worker(deployment: Deployment, name: str, scheduler: str) -> Path:
    worker = deployment.workers[name]
    _process, log = deployment.start(
        name,
        [*worker.cgroup_prefix, *worker.host.prefix()],
        [
            *(_dask(), "worker", scheduler, "--host", worker.host.address),
            *("--nworkers", "1", "--nthreads", "1", "--no-dashboard"),
            *("--death-timeout", str(WAIT), "--preload", "pinbackend"),
        ],
        # This host's registry only; the test's own (set by conftest) is not passed on.
        env={REGISTRY_ENV: str(worker.registry)},
    )
    worker.log = log
    return log


def _host_ip(address: str) -> str:
    return address.split("://")[1].rsplit(":", 1)[0]


def _workers_by_host(client, deployment: Deployment) -> dict[str, dict]:
    """host name -> the one worker on it (address, pid), of the workers that answer."""
    by_ip = {w.host.address: name for name, w in deployment.workers.items()}
    found: dict[str, dict] = {}
    for address, pid in client.run(os.getpid, on_error="return").items():
        if isinstance(pid, int):  # not a worker that is going away
            name = by_ip[_host_ip(address)]
            assert name not in found, f"two workers on {name}"
            found[name] = {"address": address, "pid": pid}
    return found


def _report(client, address: str) -> dict:
    future = client.submit(probes.task_report, True, workers=[address], pure=False)
    return future.result(timeout=WAIT)


def _assert_on_its_cpu(report: dict, worker: WorkerHost, pid: int) -> None:
    """The worker runs every thread, and the task thread, on its host's CPU, capped to 1."""
    only = [worker.cpu]
    assert report["pid"] == pid
    assert report["host"] == worker.host.name  # its own hostname: another machine
    assert report["affinity"] == only  # the host's budget is one CPU
    assert report["pin"]["pinned"] is True and report["pin"]["cores"] == only
    assert report["pin"]["source"] == "pinbackend-preload"
    assert report["threads"] and all(cpus == only for cpus in report["threads"].values())
    assert report["task_thread"]["mask"] == only
    assert set(report["task_thread"]["blas"]) == {1}  # numpy's and scipy's OpenBLAS
    assert set(report["task_thread"]["openmp"]) == {1}


def _assert_registry_holds_only(worker: WorkerHost, report: dict):
    leases = worker.leases()
    assert len(leases) == 1, f"{worker.registry} should hold only {worker.host.name}'s: {leases}"
    (lease,) = leases
    assert lease.pid == report["pid"]
    assert lease.cores == frozenset({worker.cpu})
    assert lease.lease_id == report["pin"]["lease_id"]
    return lease


def test_each_host_pins_its_workers_within_its_own_budget_and_registry(deployment, tmp_path):
    pytest.importorskip("sklearn")  # its wheels bundle GNU OpenMP: the OpenMP cap is read
    a, b = deployment.workers["host-a"], deployment.workers["host-b"]
    scheduler = _start_scheduler(deployment, tmp_path)
    assert _host_ip(scheduler) == deployment.scheduler_host.address
    for name in deployment.workers:
        _start_worker(deployment, name, scheduler)
    with Client(scheduler, timeout=WAIT) as client:
        client.wait_for_workers(2, timeout=WAIT)
        before = _workers_by_host(client, deployment)
        assert set(before) == {"host-a", "host-b"}
        reports = {name: _report(client, w["address"]) for name, w in before.items()}

        # Each host planned only its own budget, and recorded it in its own registry.
        for name, worker in deployment.workers.items():
            _assert_on_its_cpu(reports[name], worker, before[name]["pid"])
        lease_a = _assert_registry_holds_only(a, reports["host-a"])
        lease_b = _assert_registry_holds_only(b, reports["host-b"])

        # The placement view shows both hosts, by address and by hostname, with their cores.
        view = {row.host: row for row in placement(client)}
        assert set(view) == {"host-a", "host-b"}
        for name, row in view.items():
            worker = deployment.workers[name]
            assert row.worker == before[name]["address"]
            assert _host_ip(row.worker) == worker.host.address
            assert (row.pid, row.cores, row.cpus) == (
                before[name]["pid"],
                (worker.cpu,),
                (worker.cpu,),
            )
            assert row.pinned and row.threads_on_slot is True and row.blas_threads == 1
        assert len({_host_ip(row.worker) for row in view.values()}) == 2
        text = format_placement(list(view.values()))
        assert "2 worker(s) on 2 host(s), 2 pinned." in text, text

        # Host A's worker dies (as by the OOM killer): its nanny starts a new process on
        # host A, which is pinned to host A's CPU again; host B is not disturbed.
        client.run(probes.kill_own_process, workers=[before["host-a"]["address"]], wait=False)

        def replaced():
            now = _workers_by_host(client, deployment)
            new_a, same_b = now.get("host-a"), now.get("host-b")
            return now if new_a and same_b and new_a["pid"] != before["host-a"]["pid"] else None

        after = _wait_until(replaced, "host A's nanny to restart its worker")
        assert after["host-b"] == before["host-b"]  # same address, same process
        report_a = _report(client, after["host-a"]["address"])
        report_b = _report(client, after["host-b"]["address"])
        _assert_on_its_cpu(report_a, a, after["host-a"]["pid"])
        _assert_on_its_cpu(report_b, b, before["host-b"]["pid"])
        assert report_a["pin"]["lease_id"] != lease_a.lease_id
        assert _assert_registry_holds_only(a, report_a).pid != lease_a.pid
        assert _assert_registry_holds_only(b, report_b) == lease_b  # same lease, untouched
        client.shutdown()

    # Each host's worker said once per process where it was pinned, and nothing else.
    # (distributed's own tracebacks of connections closed by the shutdown are left alone.)
    for name, count in (("host-a", 2), ("host-b", 1)):
        output = deployment.workers[name].log.read_text()
        assert output.count("pinned to CPUs") == count, output
        said = [line for line in output.splitlines() if "pinbackend - " in line]
        assert all(" - INFO - " in line for line in said), said
