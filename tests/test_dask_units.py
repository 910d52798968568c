"""The Dask integration's pure parts and its import behaviour (no cluster needed)."""

from __future__ import annotations

import doctest
import importlib

import pytest

pytest.importorskip("distributed")

from _helpers import FORBID_AFFINITY, last_json, needs_seccomp, run_python

from pinbackend.core.topology import Topology
from pinbackend.dask import PinOptions, WorkerPlacement, format_placement
from pinbackend.dask import _nanny as nanny_module
from pinbackend.dask import options as options_module
from pinbackend.dask._nanny import PLAN_ENV, plan_mismatch, spawn_env
from pinbackend.host.options import OptionsError

pytestmark = pytest.mark.dask

SMT2 = Topology.uniform(cores_per_l3=4, threads_per_core=2)  # 4 cores, CPUs 0-7


def test_option_arithmetic_examples_hold():
    assert doctest.testmod(options_module).failed == 0


def test_placement_examples_hold():
    # Among them: no thread mask read is None (not verified), never a vacuous True.
    # (pinbackend.dask.placement is also the name of a function there: import the module.)
    result = doctest.testmod(importlib.import_module("pinbackend.dask.placement"))
    assert result.attempted >= 4 and result.failed == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cores_per_worker": 0}, "cores_per_worker must be a positive integer or 'auto'"),
        ({"cores_per_worker": True}, "got True"),
        ({"reserve": "0-x"}, "reserve: invalid CPU list '0-x'"),
        ({"reserve": [-1]}, r"reserve must hold CPU numbers .* got \[-1\]"),
        ({"fail": "sometimes"}, "fail must be one of 'closed', 'open'; got 'sometimes'"),
        ({"claim_timeout": -1}, "claim_timeout must be a finite number of seconds >= 0; got -1"),
    ],
)
def test_bad_options_are_named_with_what_is_allowed(kwargs, message):
    with pytest.raises(OptionsError, match=message):
        PinOptions(**kwargs)


def test_options_normalize_and_describe_themselves():
    options = PinOptions(reserve="0,2-3", claim_timeout=5)
    assert options.reserve == frozenset({0, 2, 3}) and options.claim_timeout == 5.0
    assert options == PinOptions(reserve=[3, 2, 0], claim_timeout=5.0)
    assert options.describe() == (
        "cores-per-worker=auto, reserve=0,2-3, oversubscribe=clamp, fail=closed, claim-timeout=5"
    )


@pytest.mark.parametrize(
    ("nthreads", "cores_per_worker", "cap"),
    [(2, None, "1"), (1, None, "2"), (1, 2, "4"), (4, 1, "1"), (3, 2, "1")],
)
def test_spawn_env_caps_each_task_thread_to_its_share_of_the_slot(nthreads, cores_per_worker, cap):
    env = spawn_env(nthreads, SMT2, PinOptions(cores_per_worker))
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == cap
    # Not a CPU budget: the worker claims its slot (maybe wider than one thread's cap) from
    # the whole host, and pinbackend would read PYTHON_CPU_COUNT as its budget.
    assert "PYTHON_CPU_COUNT" not in env


def test_nanny_examples_hold():
    assert doctest.testmod(nanny_module).failed == 0


@pytest.mark.parametrize(
    ("record", "options", "differs"),
    [
        ('{"cores_per_worker": null, "threads": 2}', PinOptions(), False),
        ('{"cores_per_worker": null, "threads": 2}', PinOptions(cores_per_worker=1), False),
        ('{"cores_per_worker": 2, "threads": 4}', PinOptions(), True),
        ('{"cores_per_worker": null, "threads": 2}', PinOptions(cores_per_worker=3), True),
        ("not json", PinOptions(cores_per_worker=3), False),
        ('{"threads": 2}', PinOptions(cores_per_worker=3), False),
        (None, PinOptions(cores_per_worker=3), False),
    ],
)
def test_worker_tells_when_its_nanny_planned_another_cap(record, options, differs):
    # Only the cap counts: other options that plan the same threads (auto and 1 core with
    # one task thread on SMT2) are no reason to warn; a record we do not write is ignored.
    environ = {} if record is None else {PLAN_ENV: record}
    message = plan_mismatch(environ, 1, SMT2, options)
    assert (message is not None) == differs, message
    if differs:
        ours = spawn_env(1, SMT2, options)["OMP_NUM_THREADS"]
        assert message.endswith(f"give {ours}") and "its nanny planned" in message


def test_format_placement_shows_pinned_and_unpinned_workers():
    rows = [
        WorkerPlacement("tcp://a:1", "0", "h1", 10, 2, (0, 1), True, (0, 1), True, 1, 1),
        WorkerPlacement(
            "tcp://a:2",
            "1",
            "h1",
            11,
            1,
            None,
            False,
            (0, 1, 2, 3),
            False,
            4,
            None,
            reason="no free slot",
        ),
    ]
    text = format_placement(rows)
    # The host's shape first (no pinbackend outcome recorded: "not set up"), then the table.
    assert text.splitlines()[0] == "host h1: 2 workers x 1/2 threads: 2 not set up"
    lines = text.splitlines()[1:]
    assert lines[0].split() == [
        "worker",
        "host",
        "pid",
        "cores",
        "threads",
        "BLAS",
        "OpenMP",
        "pinned",
    ]
    assert lines[1].split() == ["tcp://a:1", "h1", "10", "0-1", "2", "1", "1", "yes"]
    assert lines[2].split() == ["tcp://a:2", "h1", "11", "(0-3)", "1", "4", "-", "NO"]
    assert "2 worker(s) on 1 host(s), 1 pinned." in text
    assert "tcp://a:2: unpinned: no free slot" in text


def test_format_placement_never_says_yes_without_the_thread_masks():
    rows = [
        WorkerPlacement("tcp://a:1", "0", "h1", 10, 1, (0,), True, (0,), None, 1, None),
        WorkerPlacement("tcp://a:2", "1", "h1", 11, 1, (1,), True, (0, 1), False, 1, None),
    ]
    lines = format_placement(rows).splitlines()[1:]
    assert [line.split()[-1] for line in lines[1:3]] == ["unknown", "NO"]
    assert "2 worker(s) on 1 host(s), 0 pinned." in lines
    assert "tcp://a:1: its threads' CPU masks could not be read (/proc/10/task)" in lines[5]
    assert lines[6] == "tcp://a:2: some threads run outside the slot (CPUs 0-1)"


def test_import_pinbackend_loads_neither_distributed_nor_click():
    result = run_python(
        """
        import json, sys
        import pinbackend
        before = sorted(m for m in ("distributed", "click", "dask") if m in sys.modules)
        found = hasattr(pinbackend, "dask_setup") and hasattr(pinbackend, "dask_teardown")
        listed = {"dask_setup", "dask_teardown"} <= set(dir(pinbackend))
        try:
            pinbackend.no_such_thing
            missing = "no error"
        except AttributeError as error:
            missing = str(error)
        print(json.dumps([before, found, listed, missing]))
        """
    )
    before, found, listed, missing = last_json(result.stdout)
    assert before == [] and found and listed
    assert missing == "module 'pinbackend' has no attribute 'no_such_thing'"


def test_parsing_preload_options_has_no_side_effect():
    result = run_python(
        """
        import json, os, threading
        import click
        from pinbackend.host.holders import list_leases
        env, cpus, threads = dict(os.environ), os.sched_getaffinity(0), threading.active_count()
        import pinbackend
        command = pinbackend.dask_setup
        assert isinstance(command, click.Command)
        ctx = command.make_context("dask_setup", ["--pin-cores-per-worker", "2",
                                   "--pin-reserve", "0", "--pin-fail", "open",
                                   "--pin-oversubscribe", "share"])
        print(json.dumps({
            "params": {k: sorted(v) if isinstance(v, frozenset) else v
                       for k, v in ctx.params.items()},
            "env_same": dict(os.environ) == env,
            "cpus_same": os.sched_getaffinity(0) == cpus,
            "threads_same": threading.active_count() == threads,
            "leases": len(list_leases(scope=None)),
        }))
        """
    )
    report = last_json(result.stdout)
    # The old --pin-... spellings land under the options' names.
    assert report["params"] == {
        "cores_per_worker": 2,
        "reserve": [0],
        "oversubscribe": "share",
        "fail": "open",
        "claim_timeout": 30.0,
        "other_pins": "avoid",
    }
    assert report["env_same"] and report["cpus_same"] and report["threads_same"]
    assert report["leases"] == 0


def test_preload_refuses_servers_it_cannot_set_up():
    import pinbackend

    with pytest.raises(TypeError, match=r"worker or nanny preload .* cannot set up a str"):
        pinbackend.dask_setup.callback("scheduler?", claim_timeout=1.0)


@needs_seccomp
def test_a_worker_where_affinity_is_forbidden_reports_why_it_is_unpinned():
    code = (
        FORBID_AFFINITY
        + """
import json, warnings
import pinbackend.host.slot as slot_module
from pinbackend.dask._worker import _apply
from pinbackend.host.leases import claim
apply_caps = slot_module.apply_caps
def noisy_apply_caps(threads, *args):
    # As threadpoolctl does when it finds two OpenMP runtimes.
    warnings.warn("a warning from a library", RuntimeWarning)
    return apply_caps(threads, *args)
with warnings.catch_warnings(record=True) as outside:
    warnings.simplefilter("always")
    lease = claim({0})
    _, first = _apply(lease, 1)
    slot_module.apply_caps = noisy_apply_caps
    _, again = _apply(lease, 1)  # pinning warns once per process: no warning this time
    lease.release()
print(json.dumps({"first": first, "again": again, "outside": [str(w.message) for w in outside]}))
"""
    )
    report = last_json(run_python(code).stdout)
    assert report["first"].startswith("CPU pinning is unavailable here")
    assert "See python -m pinbackend explain pinning-unavailable (https://" in report["first"]
    assert report["again"] == "CPU affinity cannot be set here"
    # The pinning warning became the reason; the library's warning is not one, nor lost.
    assert report["outside"] == ["a warning from a library"]


def test_format_placement_shows_each_hosts_shape_and_the_workers_policy_closed():
    note = "2 workers x 1 thread fit this host's 2 cores (CPUs 0-1); the workers beyond them "
    rows = [
        WorkerPlacement(
            "tcp://a:1", "0", "h1", 10, 1, (0,), True, (0,), True, 1, None, outcome="pinned"
        ),
        WorkerPlacement(
            "tcp://a:2", "1", "h1", 11, 1, (1,), True, (1,), True, 1, None, outcome="pinned"
        ),
        WorkerPlacement(
            "tcp://a:3",
            "2",
            "h1",
            12,
            1,
            None,
            False,
            (),
            False,
            None,
            None,
            outcome="closed",
            note=note + "are closed (oversubscribe='clamp')",
        ),
        WorkerPlacement(
            "tcp://b:1", "0", "h2", 20, 1, (0,), True, (0,), True, 1, None, outcome="pinned"
        ),
        WorkerPlacement(
            "tcp://b:2",
            "1",
            "h2",
            21,
            1,
            (0,),
            True,
            (0,),
            True,
            1,
            None,
            outcome="shared",
            note=note + "share cores (oversubscribe='share')",
        ),
    ]
    lines = format_placement(rows).splitlines()
    assert lines[:4] == [
        "host h1: 3 workers x 1 thread: 2 pinned, 1 closed",
        f"  {note}are closed (oversubscribe='clamp')",
        "host h2: 2 workers x 1 thread: 1 pinned, 1 shared",
        f"  {note}share cores (oversubscribe='share')",
    ]
    table = {line.split()[0]: line.split() for line in lines[5:10]}
    assert table["tcp://a:3"][3:] == ["-", "1", "-", "-", "closed"]
    assert table["tcp://b:2"][3:] == ["0", "1", "1", "-", "shared"]
    assert "5 worker(s) on 2 host(s), 3 pinned, 1 shared, 1 closed." in lines
    assert not rows[2].running and rows[4].running


@pytest.mark.parametrize("restart", [True, False, "auto"])
def test_nanny_half_restarts_only_workers_spawned_without_the_caps(restart):
    from pinbackend.dask import PinNannyPlugin

    class Nanny:
        address_safe = "tcp://n:1"
        nthreads = 1

        def __init__(self, spawned):
            names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            self.env = dict.fromkeys(names, spawned)
            self.pre_spawn_env = dict(self.env)
            self.process = None

    decided = {}
    for spawned in ("1", "2"):
        for running in (False, True):
            nanny = Nanny(spawned)
            if running:
                from distributed.core import Status

                nanny.process = type("P", (), {"status": Status.running})()
            plugin = PinNannyPlugin(cores_per_worker=2, restart=restart)  # cap 2 on 2 cores
            plugin.setup(nanny)
            decided[spawned, running] = plugin.restart
            assert nanny.env["OMP_NUM_THREADS"] == nanny.pre_spawn_env["OMP_NUM_THREADS"]
    if restart == "auto":
        # Only a running worker spawned with other caps; one about to start gets them anyway.
        assert decided == {
            ("1", False): False,
            ("1", True): True,
            ("2", False): False,
            ("2", True): False,
        }
    else:
        assert set(decided.values()) == {restart}


def test_nanny_half_rejects_an_unknown_restart_mode():
    from pinbackend.dask import PinNannyPlugin

    with pytest.raises(ValueError, match="restart must be True, False or 'auto'; got 'yes'"):
        PinNannyPlugin(restart="yes")


def test_one_warning_per_host_is_agreed_through_the_registry(monkeypatch):
    from pinbackend.dask import _notice
    from pinbackend.host.leases import claim

    with claim({0}, command="a sibling") as sibling:
        assert _notice.first_on_host("cluster A closed", [sibling.lease_id]) is True
        assert _notice.first_on_host("cluster A closed", [sibling.lease_id]) is False
        assert _notice.first_on_host("cluster B closed", []) is True  # another cluster
        # Old, but a lease it names is still held: the same episode.
        monkeypatch.setattr(_notice, "FRESH_SECONDS", 0.0)
        assert _notice.first_on_host("cluster A closed", [sibling.lease_id]) is False
    # Old and none of its leases held (every worker restarted, or a new cluster on the
    # same address): tell again.
    assert _notice.first_on_host("cluster A closed", []) is True
    assert _notice.first_on_host("cluster B closed", []) is True


def test_a_group_never_waits_for_its_own_members():
    import time

    from pinbackend.host.groups import group_room
    from pinbackend.host.leases import LeaseConflict, claim
    from pinbackend.host.lifecycle import lease_slot
    from pinbackend.host.machine import read_topology
    from pinbackend.host.view import survey

    topology = read_topology()
    cpus = sorted(topology.allowed)
    options = PinOptions(claim_timeout=30)
    members = lambda info: info.command.endswith("of scheduler S")  # noqa: E731
    held = [claim({cpu}, command=f"dask worker {cpu} of scheduler S") for cpu in cpus]
    try:
        room = group_room(survey(options, group=members), 1)
        n_cores = topology.count_cores(topology.allowed)
        assert room.full and (room.slots, room.held) == (n_cores, len(cpus))
        start = time.monotonic()
        with pytest.raises(LeaseConflict, match="the group's own hold them all"):
            lease_slot(1, options, command="dask worker new of scheduler S", members=members)
        assert time.monotonic() - start < 5  # not the 30 s claim timeout
        shared = lease_slot(
            1,
            options.updated(oversubscribe="share"),
            command="dask worker new of scheduler S",
            members=members,
        )
        assert shared.info.shared == shared.cores and len(shared.cores) == 1
        shared.release()
        # Held by another job instead: that is worth waiting for (briefly here).
        held[0].release()
        held[0] = claim({cpus[0]}, command="another job")
        room = group_room(survey(options, group=members), 1)
        assert not room.full and room.free == room.slots - 1
        with pytest.raises(LeaseConflict, match=r"none freed up within 0\.3s"):
            lease_slot(
                1, options.updated(claim_timeout=0.3), command="x of scheduler S", members=members
            )
    finally:
        for lease in held:
            lease.release()
