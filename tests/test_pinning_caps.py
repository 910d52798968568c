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


# A slot applied in a process's own right, then undone: read back from inside, before, during
# and after. A thread started before the apply, one started while the slot is applied (it
# inherits the slot's mask), BLAS and OpenMP pools loaded before (sized 2 by the user), an
# environment variable the slot overrides and one it adds, os.cpu_count, loky's nested patch.
APPLY_THEN_UNDO = """
import json, os, threading
import numpy as np
import sklearn.utils._openmp_helpers  # the OpenMP runtime, loaded before the slot
from threadpoolctl import threadpool_info
from joblib._parallel_backends import LokyBackend
from pinbackend.host.slot import SCOPE_ENV, apply_slot, current_slot
from pinbackend.host.leases import claim

def state():
    return {{
        "masks": {{tid: sorted(os.sched_getaffinity(tid))
                   for tid in map(int, os.listdir("/proc/self/task"))}},
        "pools": sorted((p["user_api"], p["num_threads"]) for p in threadpool_info()),
        "env": {{name: os.environ.get(name)
                 for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHON_CPU_COUNT",
                              "PINBACKEND_SLOT", SCOPE_ENV)}},
        "cpu_count": os.cpu_count(),
        "loky_patched": "_prepare_worker_env" in vars(LokyBackend),  # its base class's
        "slot": current_slot() is not None,
    }}

for name in ("PYTHON_CPU_COUNT", "PINBACKEND_SLOT", SCOPE_ENV):
    os.environ.pop(name, None)  # as outside any slot
stop = threading.Event()
early = threading.Thread(target=stop.wait)
early.start()
a = np.ones((300, 300))
a @ a
before = state()
lease = claim({cores})
slot = apply_slot({cores}, lease=lease, own_process=True)
late = threading.Thread(target=stop.wait)
late.start()
during = state()
slot.undo()
slot.undo()  # idempotent
after = state()
stop.set()
print(json.dumps({{"before": before, "during": during, "after": after,
                   "early": early.native_id, "late": late.native_id}}))
"""


@pytest.mark.parametrize("cores", [{0}, set(sorted(os.sched_getaffinity(0))[-1:])])
def test_undo_puts_back_what_applying_a_slot_changed(cores):
    env = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    data = last_json(run_python(APPLY_THEN_UNDO.format(cores=cores), env=env).stdout)
    before, during, after = data["before"], data["during"], data["after"]
    allowed = sorted(os.sched_getaffinity(0))
    # During: every thread on the slot, the pools capped, the variables set.
    assert {tuple(m) for m in during["masks"].values()} == {tuple(sorted(cores))}
    assert str(data["late"]) in during["masks"]
    assert {n for _, n in during["pools"]} == {len(cores)}
    assert during["env"]["OMP_NUM_THREADS"] == str(len(cores))
    assert during["env"]["PINBACKEND_SCOPE"] and during["env"]["PINBACKEND_SLOT"]
    assert during["cpu_count"] == len(cores) and during["loky_patched"] and during["slot"]
    # After: as before, the thread started inside the slot on the process's CPUs too.
    assert {tuple(pool) for pool in before["pools"]} >= {("blas", 2), ("openmp", 2)}
    assert after["pools"] == before["pools"]
    assert {tid: mask for tid, mask in after["masks"].items() if tid in before["masks"]} == {
        tid: mask for tid, mask in before["masks"].items() if tid in after["masks"]
    }
    assert after["masks"][str(data["early"])] == allowed
    assert after["masks"][str(data["late"])] == allowed
    assert (
        after["env"]
        == before["env"]
        == {
            "OMP_NUM_THREADS": "2",
            "OPENBLAS_NUM_THREADS": "2",
            "PYTHON_CPU_COUNT": None,
            "PINBACKEND_SLOT": None,
            "PINBACKEND_SCOPE": None,
        }
    )
    assert after["cpu_count"] == before["cpu_count"] == os.cpu_count()
    assert not after["loky_patched"] and not after["slot"]


def test_a_slot_applied_over_another_and_a_failed_apply_leave_the_process_as_it_was():
    code = """
    import json, os
    from pinbackend.host.pinning import PinningError
    from pinbackend.host.slot import apply_slot, current_slot

    def state():
        return {"masks": sorted({tuple(sorted(os.sched_getaffinity(int(t))))
                                 for t in os.listdir("/proc/self/task")}),
                "env": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()}

    before = state()
    first = apply_slot({0}, own_process=True)
    second = apply_slot({0}, threads=1, own_process=True)  # undoes the first, then applies
    first_undone_again = first.undo()  # a no-op: it was undone already
    second.undo()
    after_two = state()
    try:
        apply_slot({0, 100000}, own_process=True)  # the kernel drops CPU 100000: refused
    except PinningError:
        failed = True
    print(json.dumps({"before": before, "after_two": after_two, "after_failed": state(),
                      "failed": failed, "slot": current_slot() is not None}))
    """
    data = last_json(run_python(code, env={"OMP_NUM_THREADS": "3"}).stdout)
    assert data["failed"] and not data["slot"]
    assert data["before"] == data["after_two"] == data["after_failed"]
    assert data["before"]["env"] == "3"


def test_cap_controllers_restore_what_they_changed_and_registered_ones_may_not():
    code = """
    import json
    import numpy
    from pinbackend.host.caps import CapController, apply_caps, register, report_caps

    class Keeps(CapController):  # a user's controller from before restores existed
        name = "keeps"
        size = 5
        def available(self):
            return True
        def apply(self, n_threads):
            type(self).size = n_threads
        def report(self):
            return {"keeps": type(self).size}

    class Restores(Keeps):
        name = "restores"
        size = 5
        def apply(self, n_threads):
            before, type(self).size = type(self).size, n_threads
            return lambda: setattr(type(self), "size", before)
        def report(self):
            return {"restores": type(self).size}

    register(Keeps())
    register(Restores())
    before = report_caps()
    applied = apply_caps(1)
    during = report_caps()
    applied.restore()
    applied.restore()  # idempotent
    print(json.dumps({"kinds": applied.kinds, "before": before, "during": during,
                      "after": report_caps()}))
    """
    data = last_json(run_python(code, env={"OPENBLAS_NUM_THREADS": "2"}).stdout)
    assert {"threadpoolctl", "keeps", "restores"} <= set(data["kinds"])
    assert data["during"]["blas"] == data["during"]["keeps"] == data["during"]["restores"] == 1
    assert data["after"]["blas"] == data["before"]["blas"] == 2
    assert data["after"]["restores"] == 5
    assert data["after"]["keeps"] == 1  # no restore: its cap stays


def test_a_forked_child_that_undoes_its_inherited_slot_stays_inside_it():
    """The child inherited the slot, not what was there before it: undoing there only
    forgets it (a pool the child starts, or a slot it applies, stays inside)."""
    code = """
    import json, os
    from pinbackend.host.slot import apply_slot, current_slot

    def state():
        return {"masks": sorted({tuple(sorted(os.sched_getaffinity(int(t))))
                                 for t in os.listdir("/proc/self/task")}),
                "slot_env": os.environ.get("PINBACKEND_SLOT"), "cpu_count": os.cpu_count(),
                "slot": current_slot() is not None}

    slot = apply_slot({0}, own_process=True)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        slot.undo()
        os.write(write, json.dumps(state()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 65536))
    slot.undo()
    print(json.dumps({"child": child, "parent": state()}))
    """
    data = last_json(run_python(code).stdout)
    assert data["child"] == {"masks": [[0]], "slot_env": "0", "cpu_count": 1, "slot": False}
    assert data["parent"]["masks"] == [sorted(os.sched_getaffinity(0))]
    assert data["parent"]["slot_env"] is None and not data["parent"]["slot"]


def test_a_tbb_that_cannot_load_is_not_capped_and_breaks_nothing(tmp_path):
    """tbb4py installed where its libtbb cannot be found (a venv's lib out of reach): the
    slot is applied without a TBB cap, as where TBB is absent, instead of failing."""
    broken = tmp_path / "tbb"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise ImportError('libtbb.so.12: cannot open shared object file: No such file')\n"
    )
    code = """
        import json
        from pinbackend.host.caps import apply_caps
        first, second = apply_caps(1), apply_caps(1)
        print(json.dumps([first.kinds, second.kinds]))
        first.restore(); second.restore()
    """
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    kinds = last_json(run_python(code, env=env).stdout)
    assert all("tbb" not in each for each in kinds)
