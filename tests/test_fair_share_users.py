"""Fair share between users, through the host registry: another user's newcomer gets its share
at the first job's next task boundary; a request nobody takes up costs one wait, not the
call; and no user can remove, rewrite or forge another's request.

Two throw-away Unix users (``_users.py``) run real joblib jobs under a host registry made by
``host init`` in a test folder (``PINBACKEND_HOST_REGISTRY``). Both plan with the registry's
leases only (``other_pins="ignore"``), so other test runs on this machine cannot change
what they see. Needs root (CI is); skipped otherwise.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import textwrap
import time

import pytest
from _helpers import SPIN_TASK
from _host_site import ATTEMPTS, first_line
from _users import wait_until

from pinbackend.host.fair import UNCLAIMED_SECONDS
from pinbackend.host.host_wants import HostWants
from pinbackend.host.hostreg import HostRegistry

CPUS = sorted(os.sched_getaffinity(0))
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(len(CPUS) < 2, reason="two jobs need 2 CPUs"),
]

#: A joblib job: ``JOB FLAGS ROLE``; the first job touches FLAGS/started as its first task
#: starts, the newcomer waits for it. Each task reports its pid, CPUs and times.
JOB = SPIN_TASK + textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from joblib import Parallel, delayed
    import pinbackend

    flags, role = Path(sys.argv[1]), sys.argv[2]
    pinned = dict(backend="pinned", other_pins="ignore")
    if role == "first":
        tasks = [delayed(spin)(0.4, str(flags / "started"))]
        tasks += [delayed(spin)(0.4) for _ in range(19)]
        out = Parallel(n_jobs=2, pre_dispatch="n_jobs", **pinned)(tasks)
    else:
        while not (flags / "started").exists():
            time.sleep(0.01)
        out = Parallel(n_jobs=-1, **pinned)(delayed(spin)(0.3) for _ in range(4))
    print(json.dumps(out), flush=True)
    """
)

#: Asks for a fair share through the host registry and takes nothing: prints the want's
#: path, then stays until killed.
ASK = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from pinbackend.host.host_wants import HostWants
    from pinbackend.host.hostreg import HostRegistry
    want = HostWants(HostRegistry(Path(sys.argv[1]))).post(frozenset({0, 1}))
    print(json.dumps({"pid": os.getpid(), "want": str(want), "at": time.time()}), flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def site(site):
    """The two users' host, with its registry made and a folder both may leave flags in."""
    flags = site.root / "flags"
    flags.mkdir()
    flags.chmod(0o1777)
    site.init()
    return site


def overlap(a: list, b: list) -> float:
    """How long two task reports ([pid, cpus, start, end]) ran at the same time."""
    return min(a[3], b[3]) - max(a[2], b[2])


def test_another_users_newcomer_gets_its_share_at_a_task_boundary(site, alice, bob):
    job = site.script("job.py", JOB)
    first = site.start(alice, job, str(site.root / "flags"), "first")
    newcomer = site.start(bob, job, str(site.root / "flags"), "newcomer")
    outs = [process.communicate(timeout=120) for process in (first, newcomer)]
    for process, (_, err) in zip((first, newcomer), outs, strict=True):
        assert process.returncode == 0, err
    first_tasks, new_tasks = (json.loads(out.splitlines()[-1]) for out, _ in outs)
    dump = json.dumps({"first": first_tasks, "newcomer": new_tasks})
    # Bob's job did not wait for Alice's call (it did before: users' wants were private),
    # nor for its tail, where her workers run out of tasks: it started before half of
    # her tasks had...
    halfway = sorted(task[2] for task in first_tasks)[len(first_tasks) // 2]
    assert min(task[2] for task in new_tasks) < halfway, dump
    # ...and never ran on a core while a task of hers ran there.
    for mine in new_tasks:
        assert len(mine[1]) == 1, dump
        for theirs in first_tasks:
            assert mine[1] != theirs[1] or overlap(mine, theirs) <= 0, dump
    # Once Bob's call ended, Alice's pool ran on the core it had given him again.
    given = new_tasks[0][1]
    left = max(task[3] for task in new_tasks)
    assert any(task[1] == given and task[2] >= left for task in first_tasks), dump


def test_a_request_nobody_takes_up_costs_one_wait_not_the_call(site, alice, bob):
    """Alice asks for a share and takes nothing: Bob's pool yields a slot once, takes it
    back after ``UNCLAIMED_SECONDS``, and runs on both cores again while she still asks."""
    asker = site.start(alice, site.script("ask.py", ASK), str(site.host))
    asked = first_line(asker)
    assert asked["want"] != "None", asked
    job = SPIN_TASK + textwrap.dedent(
        """
        import json, os, time
        from joblib import Parallel, delayed
        import pinbackend
        out = Parallel(n_jobs=2, backend="pinned", other_pins="ignore")(
            delayed(spin)(0.25) for _ in range(60))
        print(json.dumps(out), flush=True)
        """
    )
    result = site.run(bob, site.script("bob.py", job), timeout=120)
    assert result.returncode == 0, result.stderr
    assert asker.poll() is None, "the asker must still ask when Bob's call ends"
    tasks = sorted(json.loads(result.stdout.splitlines()[-1]), key=lambda task: task[2])
    dump = json.dumps(tasks)
    # He heard her: one core had no task for at least the unclaimed wait, mid-call...
    gaps = []
    for cpu in CPUS:
        starts = [task for task in tasks if task[1] == [cpu]]
        gaps += [later[2] - earlier[3] for earlier, later in itertools.pairwise(starts)]
    assert max(gaps) >= UNCLAIMED_SECONDS - 0.5, dump
    # ...and then ran on both cores again: the last tasks overlap on two CPUs.
    last = tasks[-6:]
    assert any(overlap(a, b) > 0 and a[1] != b[1] for a in last for b in last), dump


ATTACK = ATTEMPTS + textwrap.dedent(
    """
    import errno, json, os, sys, time
    folder, want = sys.argv[1], sys.argv[2]
    victim_uid, victim_pid = int(sys.argv[3]), int(sys.argv[4])

    def plant(name, pid):
        with open(os.path.join(folder, name), "w") as file:
            json.dump({"pid": pid, "started": 0, "cpus": [0, 1]}, file)

    attempt("remove their want", lambda: os.unlink(want))
    attempt("rename their want", lambda: os.rename(want, want + ".moved"))
    attempt("rewrite their want", lambda: os.open(want, os.O_WRONLY))
    attempt("remove the folder", lambda: os.rmdir(folder))
    attempt("rename the folder", lambda: os.rename(folder, folder + ".moved"))
    # Forgeries: files she may make, none of which may count as a request.
    me = os.getuid()
    plant(f"share-{victim_uid}-{victim_pid}-00000001.json", victim_pid)  # his uid, her file
    plant(f"share-{me}-{victim_pid}-00000002.json", victim_pid)  # her uid, his process
    plant(f"share-{me}-1-00000003.json", 1)  # her uid, root's init
    os.symlink(want, os.path.join(folder, f"share-{victim_uid}-{victim_pid}-00000004.json"))
    # A live request of her own that names his process as the job it asks for (a pool
    # worker names its planner so): his pools would count him twice, hers as his.
    from pathlib import Path
    from pinbackend.host.host_wants import HostWants
    from pinbackend.host.hostreg import HostRegistry
    HostWants(HostRegistry(Path(folder).parent)).post(frozenset({0, 1}), job=victim_pid)
    print(json.dumps(out), flush=True)
    time.sleep(60)
    """
)


def test_no_user_can_remove_rewrite_or_forge_another_users_request(site, alice, bob):
    asker = site.start(bob, site.script("ask.py", ASK), str(site.host))
    asked = first_line(asker)
    want = asked["want"]
    folder = site.host / "wants"
    attack = site.script("attack.py", ATTACK)
    attacker = site.start(alice, attack, str(folder), want, str(bob.uid), str(asked["pid"]))
    outcomes = first_line(attacker)
    assert "done" not in outcomes.values(), outcomes
    assert any(name.startswith(f"share-{alice.uid}-") for name in os.listdir(folder))
    # Only Bob's own request counts, read by anyone (root here).
    wants = HostWants(HostRegistry(site.host))
    assert list(wants.askers().values()) == [asked["pid"]]
    assert os.path.basename(want) in wants.askers()
    # His request ends with his process, though its file stays (he is gone, nobody else
    # may remove it)...
    os.killpg(asker.pid, signal.SIGKILL)  # runuser and his python under it
    asker.communicate()
    wait_until(lambda: not wants.askers(), 10, "the dead asker's request to count no more")
    assert os.path.exists(want)
    # ...until his next process reads the folder.
    cleaned = site.run(bob, "-c", READ_AS_USER, str(site.host))
    assert cleaned.returncode == 0, cleaned.stderr
    assert not os.path.exists(want)


READ_AS_USER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pinbackend.host.host_wants import HostWants
    from pinbackend.host.hostreg import HostRegistry
    HostWants(HostRegistry(Path(sys.argv[1]))).askers()
    """
)


def test_a_registry_without_a_wants_folder_keeps_requests_private(site):
    # A registry made before requests went through it: nobody writes one there.
    os.rmdir(site.host / "wants")
    wants = HostWants(HostRegistry(site.host))
    assert not wants.usable()
    assert wants.post(frozenset(CPUS)) is None
    assert not (site.host / "wants").exists()
    assert time.time() > 0
