"""Cluster shapes on one host: as many workers as fit are pinned, the rest handled by policy.

Each shape is a real cluster, planned from this machine's own core count (N cores: N workers
of one thread, one worker of every CPU, twice as many workers as fit, one more...),
registered once (``client.register_plugin``), and read back from inside its tasks: every
thread's CPU mask, the BLAS/OpenMP pools in each task thread and in a thread a task starts
itself, the placement view. Then the same after ``client.restart()`` and after a worker is
killed (SIGKILL), as the OOM killer would.
"""

from __future__ import annotations

import math
import os
import re
import time
import traceback
from collections import Counter

import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("sklearn")  # its wheels bundle GNU OpenMP: OpenMP's caps become visible

import _dask_probes as probes  # noqa: E402
from test_dask import (  # noqa: E402, F401 - restore_environ is an autouse fixture
    ALL_CPUS,
    CORES,
    Client,
    _exit_by_itself,
    _spawn,
    local_cluster,
    restore_environ,
    scheduler_process,
    wait_until,
    worker_command,
)

import pinbackend  # noqa: E402
from pinbackend.core.cpuset import format_cpu_list  # noqa: E402
from pinbackend.dask import PinPlugin, PinRefused, format_placement, placement  # noqa: E402
from pinbackend.dask.options import host_shape  # noqa: E402
from pinbackend.host.holders import list_leases  # noqa: E402
from pinbackend.host.options import PinOptions  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(240)]

#: Generous: on an idle two-core machine every shape registers in well under a second
#: (the figures are printed); the bound catches a claim that waits for its own siblings.
REGISTER_SECONDS = 8.0

#: This machine's physical cores and CPUs: a one-thread worker gets one core, a worker of
#: every CPU the whole host (SMT siblings count as CPUs, as Dask's own ``nthreads`` does).
N, WHOLE = len(CORES), len(ALL_CPUS)


def shape(workers: int, nthreads: int, policy: str | None, expected: dict[str, int]):
    """One shape: ``workers`` x ``nthreads``, registered with ``policy``, and the outcomes
    expected on this machine."""
    name = f"{workers}x{nthreads}"
    if set(expected) != {"pinned"}:
        name += f"-{policy or 'clamp'}"
    return pytest.param(workers, nthreads, policy, expected, id=name)


def fits(nthreads: int) -> str:
    """How many workers of ``nthreads`` threads fit this host, as the messages say it."""
    width = max(len(core) for core in CORES)  # CPUs per core
    fit = N // math.ceil(nthreads / width)
    return host_shape(fit, nthreads, N, format_cpu_list(ALL_CPUS))


# (workers, threads per worker, policy, outcomes expected on this machine)
SHAPES = [
    shape(N, 1, None, {"pinned": N}),
    shape(1, WHOLE, None, {"pinned": 1}),
    shape(2 * N, 1, None, {"pinned": N, "closed": N}),
    shape(2, WHOLE, None, {"pinned": 1, "closed": 1}),
    shape(N + 1, 1, "share", {"pinned": N, "shared": 1}),
    shape(2 * N, 1, "error", {"pinned": N, "refused": N}),
]


#: pinbackend's own files, wherever it is installed (the cluster's workers import the same).
PACKAGE = os.path.dirname(pinbackend.__file__) + os.sep
#: One traceback as Python prints it: the header, indented frame lines, the exception line.
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):\n((?:[ \t].*\n)*)(.*)$", re.M)


def pinbackend_tracebacks(log: str) -> list[str]:
    """The tracebacks in ``log`` that come from pinbackend: a frame in its files, or an
    exception that names it (its own types, its messages). Tracebacks that are distributed's
    alone are not counted: a worker killed on purpose makes distributed log one
    (CommClosedError from a heartbeat, for example)."""
    return [
        match.group(0)
        for match in TRACEBACK.finditer(log)
        if f'File "{PACKAGE}' in match.group(1) or "pinbackend" in match.group(2)
    ]


def test_pinbackend_tracebacks_are_told_from_distributeds():
    from distributed.comm.core import CommClosedError

    def formatted(raise_it) -> str:
        try:
            raise_it()
        except Exception:
            return traceback.format_exc()
        raise AssertionError("did not raise")

    def comm_closed():
        raise CommClosedError("in <TCP (closed) ConnectionPool.heartbeat_worker>: Stream is closed")

    def refused():
        raise PinRefused("Dask worker tcp://127.0.0.1:1 refuses to start")

    logged = [formatted(comm_closed)]
    ours = [formatted(lambda: PinOptions(claim_timeout=-1)), formatted(refused)]
    assert f'File "{PACKAGE}' in ours[0]  # raised in pinbackend's code; the other, its type
    assert pinbackend_tracebacks("\n".join(logged)) == []
    assert pinbackend_tracebacks("log line\n".join([*logged, *ours])) == [
        text.rstrip("\n") for text in ours
    ]


def check_shape(client, nthreads: int, expected: dict[str, int]) -> list:
    """Read every running worker from inside its tasks; compare with ``expected`` outcomes
    and with the placement view. Returns the placement rows."""
    running = sum(n for outcome, n in expected.items() if outcome in ("pinned", "shared"))
    wait_until(lambda: len(client.nthreads()) == running, what=f"{running} running workers")
    seen = {}
    for address in client.nthreads():
        # nthreads tasks at once, each in its own task thread of this worker.
        futures = [
            client.submit(
                probes.concurrent_task_report, nthreads, True, workers=[address], pure=False
            )
            for _ in range(nthreads)
        ]
        started = client.submit(
            probes.pools_in_thread_started_by_task, workers=[address], pure=False
        )
        # Bounded: a worker that leaves meanwhile would leave its tasks waiting forever.
        seen[address] = ([f.result(timeout=60) for f in futures], started.result(timeout=60))
    slots = {"pinned": [], "shared": []}
    for reports, started in seen.values():
        assert len({r["task_thread"]["tid"] for r in reports}) == nthreads
        pin = reports[0]["pin"]
        slot = frozenset(pin["cores"])
        cap = max(1, len(slot) // nthreads)
        assert pin["pinned"] is True and pin["task_thread_cap"] == cap
        slots[pin["outcome"]].append(slot)
        for report in reports:
            assert {frozenset(c) for c in report["threads"].values()} == {slot}
            assert set(report["task_thread"]["blas"]) == {cap}
            assert report["task_thread"]["openmp"] == [cap]
        assert frozenset(started["mask"]) == slot
        assert set(started["blas"]) == {cap} and started["openmp"] == [cap]
    own = slots["pinned"]
    assert sum(map(len, own)) == len(frozenset().union(*own)), own  # disjoint
    assert all(slot in own for slot in slots["shared"])  # sharing only what is pinned
    assert {o: len(s) for o, s in slots.items() if s} == {
        o: n for o, n in expected.items() if o in slots
    }
    # Exclusive slots are held by live workers' leases; a sharer holds no CPU's lock and
    # records its lease in a file of its own (visible, every CPU shared).
    leases = list_leases(scope=None)
    exclusive = [lease for lease in leases if not lease.shared]
    assert sorted(sorted(lease.cores) for lease in exclusive) == sorted(map(sorted, own))
    sharers = [lease for lease in leases if lease.shared]
    assert all(lease.shared == lease.cores for lease in sharers)
    assert sorted(sorted(lease.cores) for lease in sharers) == sorted(map(sorted, slots["shared"]))
    rows = placement(client)
    assert Counter(row.outcome for row in rows) == Counter(expected)
    for row in rows:
        if row.running:
            reports, _ = seen[row.worker]
            assert row.cores == tuple(reports[0]["pin"]["cores"]) and row.threads_on_slot
    return rows


@pytest.mark.parametrize(("n_workers", "nthreads", "policy", "expected"), SHAPES)
def test_a_hosts_workers_fit_its_cores_by_policy(
    n_workers, nthreads, policy, expected, capfd, request
):
    with local_cluster(n_workers=n_workers, threads_per_worker=nthreads) as (_cluster, client):
        start = time.monotonic()
        if policy == "error":
            with pytest.raises(PinRefused, match=f"refuses to start: {re.escape(fits(1))}"):
                client.register_plugin(PinPlugin(oversubscribe=policy))
        else:
            client.register_plugin(PinPlugin(oversubscribe=policy))
        took = time.monotonic() - start
        # Reported with -o junit_family=xunit1 --junitxml=FILE.
        request.node.user_properties.append(("register_plugin_seconds", round(took, 3)))
        assert took < REGISTER_SECONDS
        rows = check_shape(client, nthreads, expected)
        text = format_placement(rows)
        counted = ", ".join(f"{n} {o}" for o, n in expected.items())
        assert f"x {nthreads} thread" in text.splitlines()[0]
        assert text.splitlines()[0].endswith(counted), text
        if set(expected) != {"pinned"}:
            assert f"  {fits(nthreads)}" in text.splitlines()[1]

        client.restart()
        check_shape(client, nthreads, expected)

        victim = sorted(client.nthreads())[0]
        victim_pid = client.run(os.getpid, workers=[victim])[victim]
        client.run(probes.kill_own_process, workers=[victim], wait=False)
        wait_until(lambda: victim not in client.nthreads(), what="the killed worker to be removed")
        check_shape(client, nthreads, expected)
        assert victim_pid not in client.run(os.getpid).values()
    # One warning per host, whatever the number of workers the policy handled (restarts
    # and replacements included); LocalCluster workers log to this process's stderr.
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "pinbackend - WARNING" in line]
    errors = [line for line in err.splitlines() if "pinbackend - ERROR" in line]
    # No traceback from pinbackend, except the refusals asked for: distributed logs each
    # refused worker's failed plugin setup with its traceback (PinRefused). Tracebacks of
    # distributed's own, such as a heartbeat's after the SIGKILL above, are not pinbackend's.
    ours = pinbackend_tracebacks(err)
    if policy == "error":
        assert len(errors) == expected["refused"] and not warnings, errors
        assert len(ours) == expected["refused"], ours
        assert all("PinRefused: " in text for text in ours), ours
    else:
        assert not errors and not ours, err
    if set(expected) == {"pinned"}:
        assert not warnings, warnings
    elif policy != "error":
        (warning,) = warnings
        outcome = "share cores" if policy == "share" else "are closed"
        assert f"the workers beyond them {outcome}" in warning


@pytest.mark.parametrize(
    ("n_workers", "policy", "expected"),
    [
        pytest.param(2 * N, "clamp", {"pinned": N, "closed": N}, id=f"{2 * N}x1-clamp"),
        pytest.param(N + 1, "share", {"pinned": N, "shared": 1}, id=f"{N + 1}x1-share"),
    ],
)
def test_dask_worker_nworkers_beyond_the_cores_runs_the_shape_that_fits(
    tmp_path, n_workers, policy, expected
):
    args = ["--nworkers", str(n_workers), "--nthreads", "1"]
    args += ["--preload-nanny", "pinbackend", "--preload", "pinbackend"]
    args += ["--oversubscribe", policy]
    with scheduler_process(tmp_path) as scheduler:
        worker = _spawn(worker_command("dask worker", scheduler, *args))
        try:
            with Client(scheduler, timeout=60) as client:
                running = expected["pinned"] + expected.get("shared", 0)
                wait_until(
                    lambda: len(placement(client)) == n_workers,
                    what="every worker to be pinned, shared or closed",
                )
                check_shape(client, 1, expected)
                assert worker.poll() is None  # the closed workers did not end the command
                client.shutdown()
        finally:
            output = _exit_by_itself(worker)
    lines = output.splitlines()
    (warning,) = [line for line in lines if "pinbackend - WARNING" in line]
    assert fits(1) in warning
    assert not [line for line in lines if "pinbackend - ERROR" in line]
    assert output.count("pinned to CPUs") == running
    # Nothing of a failed start: the closed workers registered, then closed like any worker.
    assert "Nanny failed to start" not in output and "failed to setup" not in output
