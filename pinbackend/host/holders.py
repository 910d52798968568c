"""Who holds which CPUs: the lease records in the registry's lock files, read back.

A CPU is held while some process holds its lock file's ``flock``; the record in the file
says by whom (:class:`LeaseInfo`). Records are read without trusting them: a held lock whose
record does not check out counts as held by an unknown process, and a path no claim could
lock raises :class:`.UnsafeLeaseFile` (see :mod:`.registry`). This module also collects the
scope folders of leases that ended without a release (killed, or handed to a program by
``exec``). Claims and the lease handle are in :mod:`.leases`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .. import _platform
from ..core.cpuset import format_cpu_list
from .hostreg import HostRegistry, find_host_registry, trusted_record
from .kernel_locks import LockHolders
from .lease_info import LeaseInfo, lease_from_record, unknown_holder
from .registry import (
    LOCK_NAME,
    SHARE_NAME,
    LeaseError,
    RegistryError,
    is_cpu_list,
    is_lock_file,
    is_private_dir,
    lock_path,
    open_existing,
    read_record,
    registry_dir,
    registry_failure,
    scope_dir,
    scope_names,
)
from .wants import remove_dead_wants

__all__ = [
    "LeaseInfo",
    "busy_cpus",
    "collect_after_claim",
    "describe_holder",
    "holders_of",
    "host_holders",
    "list_leases",
    "merge_host",
    "remove_idle_scope",
]


def _read_lease(fd: int, cpu: int, scope: str) -> LeaseInfo:
    """The lease recorded in a held lock file; an unknown holder if it cannot be trusted."""
    uid = os.fstat(fd).st_uid
    for attempt in range(3):
        if attempt:
            time.sleep(0.01)  # the holder may be writing its record right now
        data = read_record(fd)
        info = lease_from_record(data, cpu, scope, uid) if data is not None else None
        if info is not None:
            return info
    return unknown_holder(cpu, scope)


def describe_holder(holder: LeaseInfo) -> str:
    """Who holds a lease, for messages: ``pid 12 (python job.py)``, an unknown process,
    another user's lease in the host registry (``pid 12 of user bob``: its command only for
    root), or a process pinned there without a lease (its user named)."""
    if holder.pid is None:
        return (
            f"an unknown process (its record of CPU {format_cpu_list(holder.cores)} is "
            f"unreadable; `python -m pinbackend status` lists the lock files)"
        )
    shown = f" ({holder.command})" if holder.command else ""
    if holder.source == "lease" and holder.uid not in (None, os.geteuid()):
        # Another user's lease in the host registry: their command only where root reads.
        return f"pid {holder.pid} of user {_platform.user_name(holder.uid)}{shown}"
    if holder.source == "affinity":
        return (
            f"pid {holder.pid} of user {_platform.user_name(holder.uid)} ({holder.command}), "
            f"pinned there by its CPU affinity (no lease here)"
        )
    # No command: another user's lease whose user /proc hides (hidepid).
    return f"pid {holder.pid}{shown}"


def _holder_of(directory: Path, cpu: int, scope: str) -> LeaseInfo | None:
    """Who holds one CPU's lock: None if nobody; an unknown holder if its record is untrusted.

    Fails closed two ways. A held lock whose record does not check out (a live process wrote
    garbage, or is writing right now) makes the CPU busy, held by an unknown process. A path
    no claim could lock (a symlink, FIFO, directory, another user's or a hard-linked file)
    raises :class:`.UnsafeLeaseFile` at once: waiting cannot help, and planning around it
    would hide it.
    """
    fd = open_existing(lock_path(directory, cpu))
    if fd is None:
        return None  # no such file, or the scope collector removed it after we opened it
    try:
        if not _platform.probe_lock(fd):
            return None
        return _read_lease(fd, cpu, scope)
    except OSError:
        return unknown_holder(cpu, scope)
    finally:
        os.close(fd)


def holders_of(
    directory: Path,
    cpus: Iterable[int],
    scope: str,
    problems: list[RegistryError] | None = None,
) -> list[LeaseInfo]:
    """The leases that hold some of ``cpus`` in a scope's folder, each once.

    A lock file that cannot be trusted or opened raises, or with ``problems`` is appended
    to it and skipped.
    """
    found: dict[str, LeaseInfo] = {}
    for cpu in sorted(cpus):
        try:
            info = _holder_of(directory, cpu, scope)
        except RegistryError as error:
            if problems is None:
                raise
            problems.append(error)
            continue
        if info is not None:
            found.setdefault(info.lease_id, info)
    return list(found.values())


def host_holders(
    registry: HostRegistry,
    cpus: Iterable[int] | None = None,
    problems: list[RegistryError] | None = None,
) -> list[LeaseInfo]:
    """Every user's leases in the host registry on ``cpus`` (default: every CPU it has a
    lock file for), as the kernel shows them.

    The kernel says which process holds a CPU's lock (``/proc/locks``) and whose it is
    (``/proc/PID``); a public record adds the lease's id, age and shared CPUs only where it
    names that pid and lies in that user's own folder (:func:`.hostreg.trusted_record`).
    The cores are those the kernel shows the process holding (plus the record's shared
    ones): a record cannot claim more. Commands are read for root only.
    """
    cpus = registry.lock_cpus() if cpus is None else sorted(cpus)
    kernel = LockHolders(registry.path)
    found: dict[tuple, tuple[set[int], dict | None, int | None]] = {}
    uids: dict[int, int | None] = {}
    for cpu in cpus:
        try:
            fd = registry.open_lock(cpu)
        except RegistryError as error:
            if problems is None:
                raise
            problems.append(error)
            continue
        try:
            held, pid = kernel.holder(fd)
        finally:
            os.close(fd)
        if not held:
            continue
        key, data, uid = _identify(registry, cpu, pid, found, uids)
        found.setdefault(key, (set(), data, uid))[0].add(cpu)
    return [_host_lease(key, *value) for key, value in found.items()]


def _identify(
    registry: HostRegistry, cpu: int, pid: int | None, found: dict, uids: dict
) -> tuple[tuple, dict | None, int | None]:
    """Whose is the lock of ``cpu`` that ``pid`` holds: the lease's key, its trusted record
    (None if none) and the holder's uid. A lease already read whose record names this CPU
    is not read again (one record per lease and process, not per CPU)."""
    if pid is None:
        return (None, None, cpu), None, None
    if pid not in uids:
        uids[pid] = _platform.process_uid(pid)
    uid = uids[pid]
    for key, (_, data, _) in found.items():
        if key[0] == pid and data is not None and cpu in data["cores"]:
            return key, data, uid
    record = registry.read_record(uid, cpu) if uid is not None else None
    data = trusted_record(record, cpu, pid, uid)
    return (pid, data["lease_id"] if data else None, None), data, uid


def _host_lease(key: tuple, held: set[int], data: dict | None, uid: int | None) -> LeaseInfo:
    pid = key[0]
    if pid is None:
        return unknown_holder(min(held), "")
    command = _platform.process_command(pid) if os.geteuid() == 0 else ""
    if data is None:
        return LeaseInfo(f"host-{pid}", pid, frozenset(held), command, None, uid=uid)
    shared = frozenset(data["shared"]) - held
    return LeaseInfo(
        data["lease_id"],
        pid,
        frozenset(held) | shared,
        command,
        float(data["since"]),
        shared=shared,
        owner=data["owner"],
        uid=uid,
    )


def merge_host(own: list[LeaseInfo], host: list[LeaseInfo]) -> list[LeaseInfo]:
    """This user's top-level leases (their records hold the commands) and every other lease
    the host registry shows; one of this user's leases there (the same id, or a process
    holding leases here) is shown once, from its own record."""
    mine = {info.lease_id for info in own} | {info.pid for info in own}
    me = os.geteuid()
    return own + [
        info for info in host if not (info.uid == me and {info.lease_id, info.pid} & mine)
    ]


def list_leases(
    scope: str | None = "", *, problems: list[RegistryError] | None = None
) -> list[LeaseInfo]:
    """Return the live leases in a scope, oldest first.

    ``""`` is the host scope (top-level leases); a lease id is the scope of the pools nested
    inside that lease; ``None`` lists every scope, and removes the scope folders of leases
    that ended without :meth:`.Lease.release` (killed, or handed to a program by ``exec``)
    and the wants of processes that ended while they waited (:mod:`.wants`).

    A lock file that cannot be trusted (:class:`.UnsafeLeaseFile`) or opened raises, unless
    ``problems`` is given: then each such error is appended to it and the listing goes on
    (``status`` shows them beside the leases).
    """
    if scope is not None:
        return _leases_in(scope, problems)
    # Folders first, leases second: a parent lease held when its folder was listed is then
    # among the leases read (see _remove_stale_scopes).
    names = scope_names()
    leases = [info for name in ["", *names] for info in _leases_in(name, problems)]
    _remove_stale_scopes(names, leases)
    remove_dead_wants()
    return leases


def _leases_in(scope: str, problems: list[RegistryError] | None = None) -> list[LeaseInfo]:
    directory = scope_dir(scope, create=False)
    try:
        entries = os.listdir(directory) if directory is not None else []
    except FileNotFoundError:
        entries = []  # collected meanwhile
    except OSError as error:
        raise registry_failure("list the lease directory", directory, error) from None
    cpus = [int(match[1]) for match in map(LOCK_NAME.fullmatch, entries) if match]
    leases = holders_of(directory, cpus, scope, problems) if cpus else []
    sharers = [directory / name for name in entries if SHARE_NAME.fullmatch(name)]
    leases += [info for path in sharers for info in _sharer(path, scope)]
    registry = None if scope else find_host_registry()
    if registry is not None:
        leases = merge_host(leases, host_holders(registry, problems=problems))
    return sorted(leases, key=lambda info: (info.since or 0.0, info.lease_id))


def _sharer(path: Path, scope: str) -> list[LeaseInfo]:
    """The lease a sharer (no CPU's lock: all shared) records in its own file, while alive."""
    fd = open_existing(path)
    if fd is None:
        return []
    try:
        if not _platform.probe_lock(fd):
            with contextlib.suppress(OSError):  # its holder died (locked before it was named)
                os.unlink(path)
            return []
        cores = (read_record(fd) or {}).get("cores")
        return [_read_lease(fd, cores[0], scope)] if cores and is_cpu_list(cores) else []
    finally:
        os.close(fd)


def busy_cpus(scope: str = "", *, ignore_owner: int | None = None) -> frozenset[int]:
    """Return the CPUs that live leases in ``scope`` hold (shared ones are not held).

    Leases of pools planned by ``ignore_owner`` are left out: a pool re-planning must not
    count its own workers as strangers.
    """
    return frozenset().union(
        *(
            info.cores - info.shared
            for info in list_leases(scope)
            if ignore_owner is None or info.owner != ignore_owner
        )
    )


# Scope folders. A nested pool's folder is live while its parent lease is held. One that
# outlived its parent (the parent was killed, or ended with the program it handed its
# descriptors to) is removed by the next process that lists every scope or claims at the top.


def _remove_stale_scopes(names: Iterable[str], leases: Iterable[LeaseInfo]) -> None:
    """Remove the scope folders in ``names`` whose parent lease is not among ``leases``.

    Lease ids are never reused, so a parent found free stays free; nested leases that an
    orphan still holds keep their folder (see :func:`_remove_scope_folder`).
    """
    held = {info.lease_id for info in leases}
    for name in names:
        if name not in held:
            _remove_scope_folder(name)


def collect_after_claim(scope: str) -> None:
    """After a top-level claim: collect stale scope folders, if there are any (best effort)."""
    if scope:
        return
    with contextlib.suppress(LeaseError, OSError):
        names = scope_names()
        if names:
            leases = [info for name in ["", *names] for info in _leases_in(name)]
            _remove_stale_scopes(names, leases)


def remove_idle_scope(info: LeaseInfo) -> None:
    """After a release: remove the lease's scope folder unless the lease lives on elsewhere.

    A descriptor passed to a child keeps the lock (and the child's nested pools) alive.
    """
    with contextlib.suppress(LeaseError, OSError):
        if not os.path.lexists(registry_dir() / f"scope-{info.lease_id}"):
            return
        directory = scope_dir(info.scope, create=False)
        held = info.cores - info.shared
        if directory is not None and held:
            holder = _holder_of(directory, min(held), info.scope)
            if holder is not None and holder.lease_id == info.lease_id:
                return
        _remove_scope_folder(info.lease_id)


def _remove_scope_folder(lease_id: str) -> None:
    """Remove a scope folder whose leases are all free; leave it if anything is in the way.

    Its lock files are unlinked only while we hold every one of their locks. A claim that
    opened one before the unlink finds it locked (busy: it tries again) or, once we let go,
    unlinked (a claim's ``_lock_one`` then opens the new file at that path): nobody ends up holding
    a lock file that is no longer in the registry.
    """
    fds: list[int] = []
    try:
        folder = registry_dir() / f"scope-{lease_id}"
        if not is_private_dir(folder):
            return
        names = os.listdir(folder)
        for name in names:
            if not LOCK_NAME.fullmatch(name):
                return  # not something we made: leave the folder alone
            fds.append(os.open(folder / name, os.O_RDWR | _platform.SAFE_OPEN_FLAGS))
            if not is_lock_file(os.fstat(fds[-1])) or not _platform.lock_exclusive(fds[-1]):
                return  # held by a live (orphaned) nested lease, or not a lock file
        for name in names:
            os.unlink(folder / name)
        os.rmdir(folder)  # fails, harmlessly, if a claim created a file meanwhile
    except (LeaseError, OSError):
        return  # changed or removed meanwhile: a later pass tries again
    finally:
        for fd in fds:
            os.close(fd)
