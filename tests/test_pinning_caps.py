"""Pinning every thread and capping every pool, verified from inside real child processes."""

from __future__ import annotations

import importlib.util
import os

import pytest
from _helpers import (
    FORBID_AFFINITY,
    blas_threads,
    last_json,
    needs_seccomp,
    pinbackend_cli,
    run_python,
)

from pinbackend.host.caps import THREAD_ENV_VARS, thread_env
from pinbackend.host.pinning import PinningError, pin

PIN_IN_CHILD = """
import json, os, threading, time
import numpy as np

# A thread started before pinning, and an OpenBLAS pool already running.
stop = threading.Event()
early = threading.Thread(target=stop.wait)
early.start()
a = np.ones((400, 400))
a @ a
from pinbackend.host.pinning import pin
from pinbackend.diagnostics import process_report

pin({cores})
late = threading.Thread(target=stop.wait)  # started after pinning: inherits the mask
late.start()
report = process_report()
stop.set()
print(json.dumps(report))
"""


@pytest.mark.parametrize("cores", [{0}, {1}, {0, 1}])
def test_pin_moves_every_thread_including_running_pools(cores):
    env = {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    report = last_json(run_python(PIN_IN_CHILD.format(cores=cores), env=env).stdout)
    # Main thread, the early thread, the late thread and OpenBLAS's worker thread at least.
    assert len(report["threads"]) >= 4
    assert {tuple(m) for m in report["threads"].values()} == {tuple(sorted(cores))}
    assert report["affinity"] == sorted(cores)


def test_pin_rejects_cpus_outside_the_allowed_set_without_side_effects():
    code = """
    import os
    from pinbackend.host.pinning import PinningError, pin
    before = os.sched_getaffinity(0)
    for bad in ({0, 100000}, {100000}, set(), {-1}):
        try:
            pin(bad)
        except PinningError as error:
            print("refused", bad, "|", error)
        else:
            print("ACCEPTED", bad)
    """
    out = run_python(code).stdout
    assert "ACCEPTED" not in out
    assert out.count("refused") == 4
    assert "non-empty set of CPU numbers" in out


def test_pin_validates_in_process_too():
    with pytest.raises(PinningError, match="non-empty set"):
        pin(set())


def test_thread_env_is_a_dict_and_leaves_os_environ_alone():
    before = dict(os.environ)
    env = thread_env(3)
    assert os.environ == before
    assert {env[name] for name in THREAD_ENV_VARS} == {"3"}
    with pytest.raises(ValueError, match="positive integer; got 0"):
        thread_env(0)


def test_runtime_caps_reach_loaded_blas_and_openmp():
    code = """
    import json
    import numpy as np
    import sklearn.cluster  # loads the OpenMP runtime
    from threadpoolctl import threadpool_info
    from pinbackend.host.caps import cap_threads
    applied = cap_threads(1)
    print(json.dumps({"applied": applied, "pools": threadpool_info()}))
    """
    result = last_json(run_python(code, env={"OMP_NUM_THREADS": "2"}).stdout)
    assert "threadpoolctl" in result["applied"]
    apis = {pool["user_api"] for pool in result["pools"]}
    assert {"blas", "openmp"} <= apis
    assert {pool["num_threads"] for pool in result["pools"]} == {1}


def test_apply_slot_in_own_process_sets_cpu_count_and_child_env():
    code = """
    import json, os, subprocess, sys
    import numpy as np
    from pinbackend.host.slot import apply_slot
    from pinbackend.diagnostics import process_report
    slot = apply_slot({0}, own_process=True)
    child = subprocess.run([sys.executable, "-c",
        "import json, os; from pinbackend.diagnostics import process_report; "
        "import numpy; print(json.dumps(process_report()))"],
        capture_output=True, text=True, check=True)
    print(json.dumps({"self": process_report(), "child": json.loads(child.stdout)}))
    """
    result = last_json(run_python(code).stdout)
    for who in ("self", "child"):
        report = result[who]
        assert report["affinity"] == [0]
        assert {tuple(m) for m in report["threads"].values()} == {(0,)}
        assert blas_threads(report) == {1}
    assert result["self"]["cpu_count"] == 1
    assert result["self"]["slot"]["cores"] == [0]
    assert result["child"]["env"]["OPENBLAS_NUM_THREADS"] == "1"


# What a worker does where pinning is impossible: apply a slot twice, report what happened.
DEGRADED_SLOT_PROBE = """
import json, warnings
import numpy as np
from pinbackend.host.slot import apply_slot
from pinbackend.diagnostics import process_report
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = apply_slot({0})
    second = apply_slot({0})
print(json.dumps({
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "pinned": [first.pinned, second.pinned],
    "report": process_report(),
}))
"""
# macOS has no sched_setaffinity at all: take the functions away before pinbackend decides
# its capabilities, as that OS would.
NO_AFFINITY_API = "import os\ndel os.sched_setaffinity, os.sched_getaffinity\n"


@pytest.mark.parametrize(
    ("prelude", "reason"),
    [
        pytest.param(
            FORBID_AFFINITY, "not allowed to set CPU affinity", marks=needs_seccomp, id="EPERM"
        ),
        pytest.param(NO_AFFINITY_API, "has no CPU affinity API", id="no-affinity-api"),
    ],
)
def test_unavailable_affinity_degrades_to_caps_with_one_warning(prelude, reason):
    result = last_json(run_python(prelude + DEGRADED_SLOT_PROBE).stdout)
    (warning,) = result["warnings"]
    assert warning.startswith("PinningUnavailableWarning: CPU pinning is unavailable")
    assert reason in warning
    assert "See python -m pinbackend explain pinning-unavailable (https://" in warning
    assert result["pinned"] == [False, False]
    assert blas_threads(result["report"]) == {1}
    assert len(result["report"]["affinity"]) == len(os.sched_getaffinity(0))


@pytest.mark.skipif(importlib.util.find_spec("tbb") is None, reason="tbb4py not installed")
def test_tbb_is_capped_by_global_control_and_by_the_mask():
    code = """
    import json
    import tbb
    from pinbackend.host.caps import cap_threads
    from pinbackend.host.pinning import pin
    pin({0})
    applied = cap_threads(1)
    limit = tbb.global_control.active_value(tbb.global_control.max_allowed_parallelism)
    print(json.dumps({"applied": applied, "limit": limit,
                      "arena": tbb.this_task_arena_max_concurrency()}))
    """
    result = last_json(run_python(code).stdout)
    assert "tbb" in result["applied"]
    assert result["limit"] == 1
    assert result["arena"] == 1


def test_cap_registry_takes_new_controllers_and_reports_what_it_set():
    code = """
    import json
    import numpy
    from pinbackend.host.caps import CapController, cap_threads, register, report_caps

    class Recorder(CapController):
        name = "recorder"
        size = None
        def available(self):
            return True
        def apply(self, n_threads):
            type(self).size = n_threads
        def report(self):
            return {"recorder": type(self).size}

    register(Recorder())
    register(Recorder())  # once only
    before = report_caps()
    applied = cap_threads(1)
    print(json.dumps({"before": before, "applied": applied, "after": report_caps()}))
    """
    data = last_json(run_python(code).stdout)
    assert data["applied"].count("recorder") == 1 and "threadpoolctl" in data["applied"]
    assert data["before"]["recorder"] is None
    assert data["after"]["recorder"] == 1 and data["after"]["blas"] == 1
    with pytest.raises(TypeError, match="needs a CapController instance"):
        from pinbackend.host.caps import register

        register(object())


@pytest.mark.skipif(importlib.util.find_spec("tbb") is None, reason="tbb4py not installed")
def test_the_runner_caps_tbb_in_the_main_process_through_the_registry(tmp_path):
    script = tmp_path / "late_tbb.py"
    script.write_text(
        "import json, tbb\n"
        "limit = tbb.global_control.active_value(tbb.global_control.max_allowed_parallelism)\n"
        "print(json.dumps({'tbb': limit}))\n"
    )
    result = pinbackend_cli("-t", "1", str(script), check=True)
    assert last_json(result.stdout) == {"tbb": 1}
