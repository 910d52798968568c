"""Every change pinbackend makes to code it does not own is a Patch: installed once, and
undone to exactly what was there (one test per place that patches), and ``host/`` patches
no framework: it imports neither joblib nor distributed."""

from __future__ import annotations

import ast
import concurrent.futures
import multiprocessing
import multiprocessing.pool
import sys
import types
from pathlib import Path

import pytest
from _helpers import last_json, run_python

from pinbackend.host.patches import ItemPatch, Patch, Patches

HOST = Path(__file__).resolve().parent.parent / "pinbackend" / "host"
#: Frameworks the adapters wire into; ``host/`` works without knowing any of them.
FRAMEWORKS = ("joblib", "distributed", "dask", "loky")


class Target:
    def method(self):
        return "original"

    @staticmethod
    def static():
        return "static"


def _wrapped(original):
    def method(*args):
        return ("wrapped", original(*args))

    return method


def test_a_patch_wraps_a_class_attribute_once_and_undo_puts_the_same_object_back():
    original = Target.__dict__["method"]
    patch = Patch(Target, "method", _wrapped)
    assert patch.install() is patch and patch.installed
    assert Target().method() == ("wrapped", "original")
    patch.install()  # idempotent: wrapped once
    assert Target().method() == ("wrapped", "original")
    patch.undo()
    patch.undo()
    assert Target.__dict__["method"] is original and not patch.installed


def test_a_staticmethod_stays_one_and_comes_back_as_itself():
    original = Target.__dict__["static"]
    with Patch(Target, "static", _wrapped):
        assert isinstance(Target.__dict__["static"], staticmethod)
        assert Target.static() == ("wrapped", "static") == Target().static()
    assert Target.__dict__["static"] is original


def test_an_objects_method_is_patched_on_the_object_and_undo_leaves_the_class_method():
    target = Target()
    with Patch(target, "method", _wrapped):
        assert target.method() == ("wrapped", "original") and Target().method() == "original"
        assert "method" in vars(target)
    assert "method" not in vars(target) and target.method() == "original"


def test_a_setting_may_add_an_attribute_and_a_module_attribute_and_a_mapping_key_come_back():
    module = types.ModuleType("fake")
    module.DEFAULT = "loky"
    registry = {"pinned": "plain"}
    target = Target()
    group = Patches(
        "settings",
        [
            Patch.setting(module, "DEFAULT", "pinned"),
            ItemPatch.setting(registry, "pinned", "runner"),
            ItemPatch.setting(registry, "new", "added"),
            Patch.setting(target, "extra", 1),
        ],
    )
    with group:
        assert module.DEFAULT == "pinned" and target.extra == 1
        assert registry == {"pinned": "runner", "new": "added"}
    assert module.DEFAULT == "loky" and registry == {"pinned": "plain"}
    assert not hasattr(target, "extra") and not group.installed


def test_patches_install_all_or_nothing():
    def broken(original):
        raise RuntimeError("cannot wrap")

    original = Target.__dict__["method"]
    group = Patches("broken", [Patch(Target, "method", _wrapped), Patch(Target, "static", broken)])
    with pytest.raises(RuntimeError, match="cannot wrap"):
        group.install()
    assert Target.__dict__["method"] is original and not group.installed


def test_the_runner_patches_undo_to_the_original_functions():
    """Every function the runner replaces is the very original again after uninstall()."""
    import concurrent.futures.process as cf_process
    import multiprocessing.context as mp_context

    import joblib.parallel

    from pinbackend.runner import RunnerConfig, install, installed, uninstall
    from pinbackend.runner._install import PATCHES

    def originals():
        return {
            "Pool.__init__": multiprocessing.pool.Pool.__dict__["__init__"],
            "ProcessPoolExecutor.__init__": vars(concurrent.futures.ProcessPoolExecutor)[
                "__init__"
            ],
            "ThreadPoolExecutor.__init__": vars(concurrent.futures.ThreadPoolExecutor)["__init__"],
            "terminate_broken": vars(cf_process._ExecutorManagerThread)["terminate_broken"],
            "SpawnProcess._Popen": vars(mp_context.SpawnProcess)["_Popen"],
            "ForkServerProcess._Popen": vars(mp_context.ForkServerProcess)["_Popen"],
            "joblib default": joblib.parallel.DEFAULT_BACKEND,
            "joblib pinned": joblib.parallel.BACKENDS["pinned"],
            "joblib pinned-default": joblib.parallel.BACKENDS.get("pinned-default"),
        }

    before = originals()
    install(RunnerConfig())
    try:
        during = originals()
        assert installed() and all(patch.installed for patch in PATCHES)
        changed = {name for name in before if during[name] is not before[name]}
        assert changed == set(before)
        assert isinstance(during["SpawnProcess._Popen"], staticmethod)
    finally:
        uninstall()
    after = originals()
    assert not installed() and not any(patch.installed for patch in PATCHES)
    assert {name for name in before if after[name] is not before[name]} == set()


def test_the_extension_load_watch_undoes_to_the_loaders_own_method(process_state):
    import importlib.machinery

    from pinbackend.host import loads
    from pinbackend.host.state import reset_process_state

    loader = importlib.machinery.ExtensionFileLoader
    original = loader.__dict__["create_module"]
    loads.watch_extension_loads()
    assert loads.watching() and loader.__dict__["create_module"] is not original
    loads.stop_watching()
    assert not loads.watching() and loader.__dict__["create_module"] is original
    loads.watch_extension_loads()
    reset_process_state()  # the tests' reset takes it out too
    assert not loads.watching() and loader.__dict__["create_module"] is original


def test_a_dask_executors_submit_wrap_is_undone_when_the_worker_is_unpinned():
    pytest.importorskip("distributed")
    from distributed.threadpoolexecutor import ThreadPoolExecutor as DaskThreadPoolExecutor

    from pinbackend.dask._executor import TaskThreadCaps

    plain = concurrent.futures.ThreadPoolExecutor(1)
    dask = DaskThreadPoolExecutor(1)
    caps = TaskThreadCaps(1)
    try:
        caps.install([plain, dask, plain])  # one executor under two names: wrapped once
        assert "submit" in vars(plain) and "submit" in vars(dask)
        assert plain.submit(lambda: 7).result(timeout=30) == 7
        caps.uninstall()
        assert "submit" not in vars(plain) and "submit" not in vars(dask)
    finally:
        plain.shutdown()
        dask.shutdown()


def test_a_loky_workers_queue_poll_wrap_is_on_its_queue_only_and_undoes():
    from pinbackend.joblib_backend import _hold_slot_as_tasks_arrive

    def _process_worker(call_queue):  # loky's worker loop, as the initializer sees it
        return _hold_slot_as_tasks_arrive(sys._getframe())

    call_queue = multiprocessing.get_context("spawn").Queue()
    try:
        original = call_queue._poll
        patch = _hold_slot_as_tasks_arrive(sys._getframe())  # no worker loop above: nothing
        assert patch is None and call_queue._poll is original
        patch = _process_worker(call_queue)
        assert call_queue._poll is not original
        call_queue.put("task")
        assert call_queue._poll(10) is True  # no keeper here: holds nothing, says what poll says
        patch.undo()
        assert call_queue._poll is original
    finally:
        call_queue.close()
        call_queue.join_thread()


def test_a_user_thread_pools_end_methods_are_its_own_again_once_it_ended():
    from pinbackend.host.threads import hold_process_wide_cap

    pool = multiprocessing.pool.ThreadPool(1)
    released = []
    hold_process_wide_cap(pool, 1, lambda: released.append(True), ("terminate", "join"))
    assert "terminate" in vars(pool) and "join" in vars(pool)
    pool.close()
    pool.join()
    assert released == [True]
    assert "terminate" not in vars(pool) and "join" not in vars(pool)
    pool.terminate()
    assert released == [True]


def test_the_nested_loky_patch_goes_with_the_slot_of_the_process_that_leaves_it():
    """A worker applying its slot shares its caps with the loky pools it starts; undoing
    the slot (leaving it) gives loky its own method back."""
    code = """
    import json, os
    from joblib._parallel_backends import LokyBackend
    from pinbackend.host.slot import apply_slot

    original = LokyBackend._prepare_worker_env  # inherited from joblib's base class
    slot = apply_slot({min(os.sched_getaffinity(0))}, threads=4, own_process=True)
    inside = LokyBackend._prepare_worker_env is not original
    shared = LokyBackend()._prepare_worker_env(2)["OMP_NUM_THREADS"]
    slot.undo()
    print(json.dumps({
        "inside": inside,
        "shared": shared,  # 4 threads for 2 loky workers: 2 each (loky alone: 4 each)
        "after": LokyBackend._prepare_worker_env is original,
        "own": "_prepare_worker_env" in vars(LokyBackend),
    }))
    """
    assert last_json(run_python(code, timeout=60).stdout) == {
        "inside": True,
        "shared": "2",
        "after": True,
        "own": False,
    }


def test_host_imports_no_framework():
    """joblib's and Dask's parts live in their adapters: nothing under ``host/`` imports
    joblib, loky, dask or distributed (read with ast, so function-level imports count)."""
    found = []
    for path in sorted(HOST.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert len(list(HOST.glob("*.py"))) >= 10
    assert found == []
