"""``pinbackend host``: the host registry, shared by every user (``init`` as root, ``status``).

``host init`` sets it up (see :mod:`pinbackend.host.hostinit`); from then on every user's
pinbackend claims through it. ``host status`` lists every user's leases there: uid, user,
pid, cores and age; a command only to its owner and to root.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .. import _platform
from ..core.cpuset import format_cpu_list
from ..host.holders import LeaseInfo, list_leases
from ..host.host_wants import HOST_WANTS_FOLDER
from ..host.hostinit import init_host_registry
from ..host.hostreg import (
    DEFAULT_HOST_REGISTRY,
    HOST_REGISTRY_ENV,
    find_host_registry,
    folder_problem,
    host_registry_path,
    registry_in_use,
)
from ..host.registry import LeaseError, RegistryError
from ._common import UsageError, add_json_option, fail, print_json

HELP = "set up (init, as root) or show (status) the registry every user of this host shares"


def add_parser(subparsers) -> None:
    """Register ``host init`` and ``host status``."""
    parser = subparsers.add_parser(
        "host",
        help=HELP,
        description=HELP + ".",
        epilog="usage: host init [--group GROUP] (as root); host status [--json]",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    init = commands.add_parser(
        "init",
        help="make the host registry (run as root)",
        description=f"Make or repair the host registry at ${HOST_REGISTRY_ENV} (default "
        f"{DEFAULT_HOST_REGISTRY}): a root-owned sticky folder with one read-only lock file "
        f"per CPU, through which every user's pinbackend then claims cores. Run as root; "
        f"running it again repairs modes and removes files users planted.",
    )
    init.add_argument(
        "--group",
        default=None,
        help="let only this group's members use it (mode 1770); default: every user (1777)",
    )
    init.set_defaults(handler=run_init)
    status = commands.add_parser(
        "status",
        help="list every user's leases in the host registry",
        description="List every user's leases in the host registry: uid, user, pid, cores "
        "and age. Commands are shown to their owner and to root only.",
    )
    add_json_option(status)
    status.set_defaults(handler=run_status)


def run_init(args: argparse.Namespace) -> int:
    """Make the host registry and say what it is."""
    gid = None if args.group is None else _gid(args.group)
    try:
        result = init_host_registry(host_registry_path(), gid)
    except (RegistryError, OSError) as error:
        fail(str(error))
    group = args.group or "root"
    who = f"members of group {args.group}" if args.group else "every user"
    print(
        f"host registry ready: {result.path} (root:{group}, mode {result.mode:04o}, sticky), "
        f"lock files for CPUs {format_cpu_list(result.cpus)}, a folder for every user's "
        f"fair-share requests"
    )
    for name in result.replaced:
        what = "folder" if name == HOST_WANTS_FOLDER else "lock file"
        print(f"  replaced {result.path / name}: it was not root's {what} (planted?)")
    print(f"from now on the pinbackend jobs of {who} claim their cores through it")
    if str(result.path) != str(DEFAULT_HOST_REGISTRY):
        print(f"every user's jobs must see {HOST_REGISTRY_ENV}={result.path} to find it")
    return 0


def _gid(group: str) -> int:
    import grp  # Unix only, and only here: host init runs on Linux, as root

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(
            f"--group {group}: no such group on this host; create it (groupadd {group}) or "
            f"name an existing one"
        ) from None


def run_status(args: argparse.Namespace) -> int:
    """Print every user's leases in the host registry."""
    problems: list[RegistryError] = []
    try:
        registry = registry_in_use()
        leases = list_leases("", problems=problems) if find_host_registry() else []
    except LeaseError as error:
        fail(str(error))
    for problem in problems:
        print(f"pinbackend: error: {problem}", file=sys.stderr)
    squatted = _squatted(registry)
    if squatted:
        print(f"pinbackend: error: {squatted}", file=sys.stderr)
    now = time.time()
    rows = [_row(info, now) for info in leases]
    if args.json:
        print_json({"registry": registry, "leases": rows, "problems": list(map(str, problems))})
        return 0
    if registry["kind"] != "host":
        print(f"no host registry in use ({registry['note']}); each user's jobs claim in their")
        print("own registry: `python -m pinbackend status` lists yours")
        return 0
    print(f"host registry: {registry['path']}")
    if not rows:
        print("no leases held")
        return 0
    print(f"{'uid':>6}  {'user':<12} {'pid':>8}  {'cores':<12} {'age':>8}  command")
    for row in rows:
        age = f"{row['age']:.0f}s" if row["age"] is not None else "?"
        command = row["command"] if row["command"] is not None else "(hidden: not yours)"
        print(
            f"{row['uid'] if row['uid'] is not None else '?':>6}  {row['user']:<12} "
            f"{row['pid'] if row['pid'] is not None else '?':>8}  {row['cores']:<12} "
            f"{age:>8}  {_printable(command)}"
        )
    return 0


def _squatted(registry: dict) -> str:
    """Why this user's record folder in the host registry is not theirs ("" if it is, or
    if it is not made yet): someone made it first, so their leases show without their age."""
    if registry["kind"] != "host":
        return ""
    folder = Path(registry["path"]) / f"user-{os.geteuid()}"
    try:
        problem = folder_problem(os.lstat(folder), os.geteuid())
    except FileNotFoundError:
        return ""
    except OSError as error:
        problem = error.strerror
    if not problem:
        return ""
    return (
        f"your record folder {folder} cannot hold your records: {problem} (made by someone "
        f"else first?); your leases hold their cores but show without their age; ask root to "
        f"remove it"
    )


def _row(info: LeaseInfo, now: float) -> dict:
    """One lease as ``host status`` shows it; the command only to its owner and to root."""
    mine = info.uid is not None and info.uid == os.geteuid()
    command = info.command if mine or os.geteuid() == 0 else None
    return {
        "uid": info.uid,
        "user": _platform.user_name(info.uid) if info.uid is not None else "?",
        "pid": info.pid,
        "cores": format_cpu_list(info.cores),
        "age": now - info.since if info.since is not None else None,
        "since": info.since,
        "lease_id": info.lease_id,
        "command": command,
    }


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a command is another process's text)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
