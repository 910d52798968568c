"""The host registry, with two real Unix users: it arbitrates between them, and resists them.

Each test makes a world-readable folder under /tmp, runs ``host init`` there as root
(``PINBACKEND_HOST_REGISTRY``), and runs pinbackend as two throw-away users (``useradd``,
``runuser``; see ``_users.py``), each with a per-user registry of their own. What is
checked: two users who start at the same instant never get one CPU (seen from inside their
processes with ``os.sched_getaffinity``), every way one user could remove, rename, rewrite
or forge another's lease fails, nothing is written through a symlink, a planted registry is
refused in one line and users fall back to their own, ``host status`` shows every user's
leases and hides commands from other users, and ``info --json`` names the registry in use.
Needs root (CI is); skipped otherwise.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _host_site import ATTEMPTS, HOLD, first_line
from _users import world_folder

from pinbackend.host.holders import host_holders, list_leases
from pinbackend.host.hostinit import init_host_registry, possible_cpus
from pinbackend.host.hostreg import HOST_REGISTRY_ENV, HostRegistry, registry_in_use
from pinbackend.host.jobs import list_jobs, register_job
from pinbackend.host.leases import LeaseConflict, claim

pytestmark = pytest.mark.timeout(180)

CPUS = sorted(os.sched_getaffinity(0))

#: Waits for an agreed instant, then becomes ``python ARGS...`` (same pid): two users start
#: their jobs at once.
AT_ONCE = textwrap.dedent(
    """
    import os, sys, time
    time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
    """
)

#: A joblib job as the issue's users ran it: every core, tasks that report their CPUs.
JOBLIB = textwrap.dedent(
    """
    import json, os, sys, time
    from joblib import Parallel, delayed
    import pinbackend

    def task(i):
        start = time.time()
        while time.time() - start < 0.3:
            pass
        return {"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)), "start": start,
                "end": time.time()}

    time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
    out = Parallel(n_jobs=-1, backend="pinned", other_pins="ignore")(
        delayed(task)(i) for i in range(8))
    print(json.dumps(out), flush=True)
    """
)


def end(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=15)


# --- set-up -----------------------------------------------------------------------------------


def test_host_init_needs_root_and_makes_a_sticky_root_folder(site, alice):
    refused = site.cli(alice, "host", "init")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "must run as root" in refused.stderr
    assert not site.host.exists()

    site.init()
    info = os.lstat(site.host)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o1777)
    locks = sorted(site.host.glob("cpu-*.lock"))
    assert {int(p.name[4:-5]) for p in locks} == set(possible_cpus()) >= set(CPUS)
    for lock in locks:
        assert (lock.stat().st_uid, stat.S_IMODE(lock.stat().st_mode)) == (0, 0o444)
    # Every user's share wants: root's, sticky like the registry.
    wants = os.lstat(site.host / "wants")
    assert (wants.st_uid, stat.S_IMODE(wants.st_mode)) == (0, 0o1777)

    # A lock file a user planted (after root lost one) is replaced by the next init.
    os.unlink(site.host / "cpu-0.lock")
    plant = site.run(alice, "-c", f"open({str(site.host / 'cpu-0.lock')!r}, 'w')")
    assert plant.returncode == 0, plant.stderr
    # So is a wants folder a user made (after root lost it): she could remove others' wants.
    os.rmdir(site.host / "wants")
    plant = site.run(alice, "-c", f"import os; os.mkdir({str(site.host / 'wants')!r}, 0o777)")
    assert plant.returncode == 0, plant.stderr
    again = site.cli(None, "host", "init")
    assert again.returncode == 0 and "replaced" in again.stdout and "cpu-0.lock" in again.stdout
    assert "wants" in again.stdout
    assert (site.host / "cpu-0.lock").stat().st_uid == 0
    assert (site.host / "wants").stat().st_uid == 0


def test_host_init_with_a_group_lets_only_its_members_in(site, alice, bob):
    group = f"pbg{secrets.token_hex(3)}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        subprocess.run(["usermod", "-aG", group, alice.name], check=True, capture_output=True)
        assert site.cli(None, "host", "init", "--group", group).returncode == 0
        info = os.lstat(site.host)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
            0,
            grp.getgrnam(group).gr_gid,
            0o1770,
        )
        kinds = {}
        for user in (alice, bob):
            result = site.cli(user, "info", "--json", "--import", "")
            assert result.returncode == 0 and result.stderr == "", result.stderr
            kinds[user.name] = json.loads(result.stdout)["registry"]
        assert kinds[alice.name]["kind"] == "host"
        # Not a member: his own registry, quietly (the admin meant it so), and why in info.
        assert kinds[bob.name]["kind"] == "user"
        assert "not open to you" in kinds[bob.name]["note"]
    finally:
        subprocess.run(["groupdel", group], capture_output=True)


def test_info_json_names_the_registry_in_use(site, alice):
    def registry() -> dict:
        result = site.cli(alice, "info", "--json", "--import", "")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["registry"]

    before = registry()
    assert before["kind"] == "user"
    assert before["path"] == str(site.homes[alice.name] / "leases")
    site.init()
    after = registry()
    assert (after["kind"], after["path"]) == ("host", str(site.host))
    text = site.cli(alice, "info", "--import", "").stdout
    assert f"lease registry: host {site.host}" in text


# --- arbitration ------------------------------------------------------------------------------


@pytest.mark.skipif(len(CPUS) < 2, reason="two users each holding a core need two CPUs")
def test_two_users_starting_at_once_never_get_one_cpu(site, alice, bob):
    """The issue's first case: each user runs `run -n 1` at the same instant."""
    site.init()
    at_once = site.script("at_once.py", AT_ONCE)
    hold = site.script("hold.py", HOLD)
    python = site.python.executable
    for _ in range(3):
        start = f"{time.time() + 1.5:.3f}"
        run = ["-m", "pinbackend", "run", "-n", "1", "--other-pins", "ignore", "--"]
        jobs = [
            site.start(user, at_once, start, *run, python, hold, "1.0") for user in (alice, bob)
        ]
        outputs = [job.communicate(timeout=60) for job in jobs]
        for job, (_, err) in zip(jobs, outputs, strict=True):
            assert job.returncode == 0, err
        reports = [[json.loads(line) for line in out.splitlines()] for out, _ in outputs]
        (a_first, a_last), (b_first, b_last) = reports
        # Both ran at the same time (the second did not wait for the first to end)...
        assert a_first["at"] < b_last["at"] and b_first["at"] < a_last["at"]
        # ...on different CPUs, from their first moment to their last.
        assert a_first["cpus"] == a_last["cpus"] and b_first["cpus"] == b_last["cpus"]
        assert not set(a_first["cpus"]) & set(b_first["cpus"]), reports


def test_two_users_joblib_jobs_at_once_never_share_a_cpu(site, alice, bob):
    """The issue's second case: `Parallel(n_jobs=-1, backend="pinned")` by both at once."""
    site.init()
    job = site.script("joblib_job.py", JOBLIB)
    start = f"{time.time() + 2.0:.3f}"
    runs = [site.start(user, job, start) for user in (alice, bob)]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    tasks = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    for mine in tasks[0]:
        for theirs in tasks[1]:
            overlap = mine["start"] < theirs["end"] and theirs["start"] < mine["end"]
            if overlap:
                assert not set(mine["cpus"]) & set(theirs["cpus"]), (mine, theirs)
    assert all(len(task["cpus"]) < len(CPUS) or len(CPUS) == 1 for task in tasks[0] + tasks[1])


# --- what users see ---------------------------------------------------------------------------


@pytest.mark.skipif(len(CPUS) < 2, reason="two users each holding a core need two CPUs")
def test_host_status_shows_every_user_and_hides_commands_from_others(site, alice, bob):
    site.init()
    held = {user.name: site.hold(user, 60) for user in (alice, bob)}
    pids = {name: first_line(process)["pid"] for name, process in held.items()}
    for viewer in (alice, bob, None):
        status = site.status(viewer)
        assert status["registry"]["kind"] == "host"
        rows = {row["pid"]: row for row in status["leases"]}
        assert set(rows) == set(pids.values()), status
        for user in (alice, bob):
            row = rows[pids[user.name]]
            assert (row["uid"], row["user"]) == (user.uid, user.name)
            assert len(row["cores"]) and row["age"] is not None and 0 <= row["age"] < 60
            shown = viewer is None or viewer.name == user.name
            assert (row["command"] is not None) == shown, (viewer, row)
            if shown:
                assert "hold.py" in row["command"]
    text = site.cli(alice, "host", "status").stdout
    assert text.count("hold.py") == 1 and "(hidden: not yours)" in text
    assert f"{bob.uid:>6}  {bob.name}" in text
    for process in held.values():
        end(process)


# --- tampering --------------------------------------------------------------------------------

ATTACK = ATTEMPTS + textwrap.dedent(
    """
    import errno, fcntl, json, os, sys, time
    host = sys.argv[1]
    victim_uid, cpu, victim_pid = map(int, sys.argv[2:5])
    lock = f"{host}/cpu-{cpu}.lock"
    theirs = f"{host}/user-{victim_uid}"
    record = f"{theirs}/cpu-{cpu}.json"

    def flock():
        fd = os.open(lock, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    attempt("remove lock file", lambda: os.unlink(lock))
    attempt("rename lock file", lambda: os.rename(lock, f"{host}/mine"))
    attempt("write lock file", lambda: os.open(lock, os.O_WRONLY))
    attempt("take the held lock", flock)
    attempt("remove record", lambda: os.unlink(record))
    attempt("rewrite record", lambda: os.open(record, os.O_WRONLY | os.O_TRUNC))
    new = f"{theirs}/cpu-99.json"
    attempt("add to their folder", lambda: os.open(new, os.O_CREAT | os.O_WRONLY))
    attempt("rename their folder", lambda: os.rename(theirs, f"{host}/moved"))
    attempt("remove their folder", lambda: os.rmdir(theirs))
    attempt("chmod the registry", lambda: os.chmod(host, 0o777))
    attempt("rename the registry", lambda: os.rename(host, host + "-moved"))
    # Forgeries in one's own folder: the victim's pid and uid in a record of one's own.
    mine = f"{host}/user-{os.getuid()}"
    os.makedirs(mine, exist_ok=True)
    forged = {"lease_id": "forged000001", "pid": victim_pid, "cores": [cpu], "since": 0,
              "shared": [], "owner": None, "uid": victim_uid, "command": "forged"}
    with open(f"{mine}/cpu-{cpu}.json", "w") as file:
        json.dump(forged, file)
    print(json.dumps(out), flush=True)
    """
)


#: Rewrites the public record of the lease its own process holds (its first argument's
#: CPU) to name another user's uid and pid as its pool's owner, then stays.
FORGE = textwrap.dedent(
    """
    import json, os, sys, time
    host, cpu, victim_pid, victim_uid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    path = f"{host}/user-{os.getuid()}/cpu-{cpu}.json"
    with open(path) as file:
        record = json.load(file)
    record.update(owner=victim_pid, uid=victim_uid)
    with open(path, "w") as file:
        json.dump(record, file)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(len(CPUS) < 2, reason="the attacker's own job needs a second CPU")
def test_no_user_can_remove_rename_rewrite_or_forge_another_users_lease(site, alice, bob):
    site.init()
    victim = site.hold(bob, 60)
    held = first_line(victim)
    (cpu,) = held["cpus"]
    attack = site.script("attack.py", ATTACK)
    result = site.run(alice, attack, str(site.host), str(bob.uid), str(cpu), str(held["pid"]))
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    assert "done" not in outcomes.values(), outcomes
    assert (
        outcomes["take the held lock"] == "EWOULDBLOCK"
        or outcomes["take the held lock"] == "EAGAIN"
    )

    # The victim's lease is whole, and still theirs, for root and for both users.
    for viewer in (None, alice, bob):
        (row,) = [row for row in site.status(viewer)["leases"] if row["pid"] == held["pid"]]
        assert (row["uid"], row["user"], row["cores"]) == (bob.uid, bob.name, str(cpu))
        assert row["lease_id"] != "forged000001"
        assert row["command"] is None or "forged" not in row["command"]
    assert all(row["uid"] != alice.uid for row in site.status(None)["leases"])
    # Her own lease, its record rewritten to name his uid and his pid as its pool's owner:
    # still hers, and never counted as a worker of his pools.
    other = next(c for c in CPUS if c != cpu)
    forge = [site.python.executable, site.script("forge.py", FORGE), str(site.host), str(other)]
    forger = site.start(
        alice, "-m", "pinbackend", "run", "--cores", str(other), "--other-pins", "ignore", "--",
        *forge, str(held["pid"]), str(bob.uid),
    )  # fmt: skip
    forged_pid = first_line(forger)["pid"]
    (lease,) = [info for info in host_holders(HostRegistry(site.host)) if info.pid == forged_pid]
    assert (lease.uid, lease.owner, lease.cores) == (alice.uid, None, frozenset({other}))
    end(forger)
    # Alice's claim on that CPU fails, naming its holder, whatever her record says.
    claim = site.cli(alice, "run", "--cores", str(cpu), "--oversubscribe", "error", "--", "true")
    assert claim.returncode != 0
    assert f"pid {held['pid']} of user {bob.name}" in claim.stderr, claim.stderr
    end(victim)


def test_a_folder_squatted_under_a_users_name_costs_them_only_the_lease_age(site, alice, bob):
    site.init()
    squat = site.run(alice, "-c", f"import os; os.mkdir({str(site.host / f'user-{bob.uid}')!r})")
    assert squat.returncode == 0, squat.stderr
    victim = site.hold(bob, 60)
    held = first_line(victim)
    rows = {}
    for viewer in (None, alice, bob):
        (row,) = [row for row in site.status(viewer)["leases"] if row["pid"] == held["pid"]]
        assert (row["uid"], row["user"], row["cores"]) == (bob.uid, bob.name, str(held["cpus"][0]))
        rows[viewer] = row
    # Her folder holds no record of his; his own view still has his lease's age and command.
    assert rows[alice]["age"] is None
    assert rows[bob]["age"] is not None and "hold.py" in rows[bob]["command"]
    said = site.cli(bob, "host", "status").stderr
    assert f"your record folder {site.host / f'user-{bob.uid}'} cannot hold your records" in said
    assert f"it belongs to uid {alice.uid}" in said
    end(victim)


def test_nothing_is_written_through_a_symlink(site, alice, bob):
    site.init()
    # Folders planted under other users' names (root's included) before they ever claimed,
    # each pointing at a folder of theirs that would pass every other check if followed.
    traps = {bob.uid: site.homes[bob.name], 0: site.root / "root-folder"}
    traps[0].mkdir(mode=0o755)
    for uid, trap in traps.items():
        link = site.run(
            alice, "-c", f"import os; os.symlink({str(trap)!r}, {str(site.host / f'user-{uid}')!r})"
        )
        assert link.returncode == 0, link.stderr
    # And a record of her own that points at a file she wants someone to overwrite.
    victim_file = site.root / "victim.txt"
    victim_file.write_text("untouched")
    victim_file.chmod(0o666)
    own = site.host / f"user-{alice.uid}"
    links = [(str(victim_file), str(own / f"cpu-{cpu}.json")) for cpu in CPUS]
    code = f"import os; os.makedirs({str(own)!r}); [os.symlink(*pair) for pair in {links!r}]"
    plant = site.run(alice, "-c", code)
    assert plant.returncode == 0, plant.stderr
    for user in (bob, None, alice):
        job = site.hold(user, 0.1)
        _, err = job.communicate(timeout=60)
        assert job.returncode == 0, err
    for trap in traps.values():
        assert list(trap.glob("cpu-*")) == []
    assert victim_file.read_text() == "untouched"


# --- a planted registry -----------------------------------------------------------------------

PLANTED = [
    "a user's folder",
    "writable without the sticky bit",
    "a symlink",
    "under a user's folder",
    "through a user's symlink",
]


@pytest.mark.parametrize("how", PLANTED)
def test_a_planted_registry_is_refused_in_one_line_and_users_fall_back(site, alice, bob, how):
    parent = site.root / "open"
    parent.mkdir()
    parent.chmod(0o1777)
    site.host = parent / "host"
    if how == "a user's folder":
        made = site.run(alice, "-c", f"import os; os.mkdir({str(site.host)!r}, 0o1777)")
        assert made.returncode == 0, made.stderr
    elif how == "writable without the sticky bit":
        site.host.mkdir()
        site.host.chmod(0o777)
    elif how in ("a symlink", "through a user's symlink"):
        # A registry root made, reached through a link of hers (she may point it elsewhere).
        real = site.root / "real"
        assert site.cli(None, "host", "init", PINBACKEND_HOST_REGISTRY=str(real)).returncode == 0
        link, site.host = (
            (site.host, site.host)
            if how == "a symlink"
            else (parent / "link", parent / "link" / "real")
        )
        target = real if how == "a symlink" else site.root
        made = site.run(alice, "-c", f"import os; os.symlink({str(target)!r}, {str(link)!r})")
        assert made.returncode == 0, made.stderr
    else:
        # A registry root made, in a folder any user may rename things in.
        parent.chmod(0o777)
        assert site.cli(None, "host", "init").returncode != 0  # init refuses such a place
        site.host.mkdir()
        site.host.chmod(0o1777)
        for cpu in possible_cpus():
            (site.host / f"cpu-{cpu}.lock").touch(0o444)
    info = site.cli(bob, "info", "--json", "--import", "")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["registry"]["kind"] == "user"
    job = site.hold(bob, 0.1)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"refusing the host registry {site.host}" in lines[0]
    assert "host init" in lines[0] and "per-user registry" in lines[0]
    assert len(json.loads(out.splitlines()[0])["cpus"]) == 1
    if how == "a user's folder":
        # A pool's workers do not repeat their parent's line: one line per job.
        job = site.start(bob, site.script("joblib_job.py", JOBLIB), "0")
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        assert err.count("refusing the host registry") == 1, err


# --- the rest of pinbackend under the host registry (in this process, as root) ----------------


@pytest.fixture
def host_registry(monkeypatch):
    """A host registry made here, in use by this process."""
    if os.geteuid() != 0:
        pytest.skip("host init needs root")
    root = world_folder()
    try:
        path = init_host_registry(root / "host").path
        monkeypatch.setenv(HOST_REGISTRY_ENV, str(path))
        yield path
    finally:
        shutil.rmtree(root, ignore_errors=True)


def is_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_scopes_jobs_and_the_scope_collector_work_under_the_host_registry(
    host_registry, lease_registry
):
    assert registry_in_use()["kind"] == "host"
    cpu = CPUS[0]
    outer = claim({cpu}, command="outer")
    try:
        assert is_held(host_registry / f"cpu-{cpu}.lock")
        assert is_held(lease_registry / f"cpu-{cpu}.lock")
        nested = claim({cpu}, scope=outer.lease_id, command="inner")
        listed = {(info.lease_id, info.scope, info.command) for info in list_leases(scope=None)}
        assert listed == {(outer.lease_id, "", "outer"), (nested.lease_id, outer.lease_id, "inner")}
        (top,) = list_leases("")
        assert (top.uid, top.pid, top.since is not None) == (0, os.getpid(), True)
        job = register_job("a runner job", {})
        assert [info.pid for info in list_jobs()] == [os.getpid()]
        job.end()
        with pytest.raises(LeaseConflict, match=f"CPUs {cpu} are held by pid {os.getpid()}"):
            claim({cpu})
        nested.release()
    finally:
        outer.release()
    assert not is_held(host_registry / f"cpu-{cpu}.lock")
    assert not (lease_registry / f"scope-{outer.lease_id}").exists()


def test_a_killed_holders_cores_are_free_at_once_under_the_host_registry(host_registry):
    # flush: without PYTHONUNBUFFERED (tox passes none) the pipe kept the line until the
    # sleeper ended, 60 s later, with its lease: the holder was gone when it was looked for.
    sleeper = "import os, time; print(*os.sched_getaffinity(0), flush=True); time.sleep(60)"
    run = ["-m", "pinbackend", "run", "-n", "1", "--other-pins", "ignore", "--"]
    hold = subprocess.Popen(
        [sys.executable, *run, sys.executable, "-c", sleeper], stdout=subprocess.PIPE, text=True
    )
    try:
        cpu = int(hold.stdout.readline())
        # Seen through the host registry itself (the kernel's lock holder), not our records.
        (seen,) = host_holders(HostRegistry(host_registry))
        assert (seen.pid, seen.uid, seen.cores) == (hold.pid, 0, frozenset({cpu}))
    finally:
        hold.kill()
        hold.communicate()
    assert host_holders(HostRegistry(host_registry)) == []
    with claim({cpu}) as lease:
        assert lease.held
