"""A process's pinbackend state is STATE's: a forked child forgets what is its parent's through
one at-fork hook, and the tests' reset forgets the rest."""

from __future__ import annotations

import ast
from pathlib import Path

from _helpers import last_json, run_python

PACKAGE = Path(__file__).resolve().parent.parent / "pinbackend"
HOOK_CALLS = ("register_at_fork", "forget_in_forked_child")


def test_a_forked_child_forgets_its_parents_leases_pools_keeper_and_claim_error():
    """Through the one hook: the parent's lease stays held by the parent alone, the child
    holds none, tracks no runner pool or executor, runs no task, has no keeper and no claim
    error, and takes every lock at once, though another thread of the parent held them at the
    fork."""
    code = """
    import json, os, threading
    from pinbackend.host.leases import claim, held_leases, _TABLE_LOCK
    from pinbackend.host.pool import PoolPlan
    from pinbackend.host.state import STATE
    from pinbackend.runner._plan import live_pool_cpus, track_pool

    class Pool:
        pass
    pool = Pool()
    lease = claim({min(os.sched_getaffinity(0))})
    track_pool(pool, PoolPlan(slots=(lease.cores,), scope="", owner=os.getpid()), lambda p: True)
    STATE.claim_channels[pool] = "channel"
    STATE.claim_error, STATE.keeper = OSError("no cores"), object()
    STATE.running_tasks.add(threading.get_ident() + 1)

    held, done = threading.Event(), threading.Event()
    def hold():
        with _TABLE_LOCK, STATE.lock:
            held.set()
            done.wait()
    threading.Thread(target=hold).start()
    held.wait()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        with _TABLE_LOCK, STATE.lock:
            pass
        report = {
            "leases": len(held_leases()), "lease_fds": lease.fds(),
            "pools": sorted(live_pool_cpus()), "running": len(STATE.running_tasks),
            "channels": len(STATE.claim_channels), "keeper": STATE.keeper is None,
            "claim_error": STATE.claim_error is None,
        }
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read, 65536))
    done.set()
    parent = {"leases": len(held_leases()), "held": lease.held, "pools": len(live_pool_cpus())}
    lease.release()
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "child": child, "parent": parent}))
    """
    result = last_json(run_python(code, timeout=60).stdout)
    assert result == {
        "exit": 0,
        "child": {
            "leases": 0,
            "lease_fds": [],
            "pools": [],
            "running": 0,
            "channels": 0,
            "keeper": True,
            "claim_error": True,
        },
        "parent": {"leases": 1, "held": True, "pools": 1},
    }


def test_only_the_process_state_registers_an_at_fork_hook():
    """One hook: no other module of the package registers one (read with ast)."""
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = getattr(getattr(node, "func", None), "attr", None)
            if isinstance(node, ast.Call) and called in HOOK_CALLS:
                callers.append(f"{path.relative_to(PACKAGE)}: {called}")
    assert callers == [
        "_platform.py: register_at_fork",  # the platform's wrapper itself
        "host/state.py: forget_in_forked_child",
    ]


def test_the_reset_forgets_the_slot_and_watches_and_keeps_held_leases(process_state):
    import importlib.machinery
    import os

    from pinbackend.host import loads
    from pinbackend.host.leases import claim, held_leases
    from pinbackend.host.state import reset_process_state
    from pinbackend.runner._main_process import LibraryWatch

    lease = claim({min(os.sched_getaffinity(0))})
    try:
        LibraryWatch(1).install()
        process_state.warn_once("said")
        process_state.claim_error = OSError("no cores")
        assert loads.watching() and process_state.library_watch is not None
        reset_process_state()
        assert not loads.watching() and process_state.library_watch is None
        assert process_state.claim_error is None and process_state.warn_once("said")
        loader = importlib.machinery.ExtensionFileLoader
        assert not hasattr(loader.__dict__["create_module"], "__wrapped__")
        assert held_leases() == [lease]
    finally:
        lease.release()
