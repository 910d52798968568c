"""Host-local core leases: which process holds which CPUs, without a central server.

A lease on a CPU is an exclusive ``flock`` on that CPU's lock file in the per-user registry
(:mod:`.registry`) and, where an admin set one up, first on that CPU's lock file in the host
registry every user shares (:mod:`.hostreg`: a top-level claim only; nested scopes stay in
the per-user registry). The kernel drops the lock when the holder dies (SIGKILL included), so a
crashed worker's cores are free at once. Every process on the host (workers of one pool,
several ``dask worker`` runs, separate jobs) claims through the same files, so each holds a
different set of CPUs. A nested pool claims inside its parent lease's *scope* (a
sub-directory), subdividing the parent's cores instead of competing for them.

Whatever goes wrong fails closed with one line that names the cause and the remedy: a claim
that cannot finish holds nothing; a held lock whose record cannot be trusted (garbage, another
version, a record being written) counts as held by an unknown process; and a lock file path
that holds something no claim makes (a symlink, FIFO, directory, hard-linked or foreign-owned
file) is refused at once, by every reader and every claim (:class:`.UnsafeLeaseFile`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import _platform
from ..core.cpuset import format_cpu_list
from .holders import (
    LeaseInfo,
    collect_after_claim,
    describe_holder,
    holders_of,
    host_holders,
    merge_host,
    remove_idle_scope,
)
from .hostreg import HostRegistry, find_host_registry
from .locks import PinLock
from .registry import (
    CPU_LIMIT,
    LeaseError,
    lock_path,
    open_file,
    registry_failure,
    scope_dir,
    write_record,
)
from .state import STATE
from .wants import ClaimWait

__all__ = [
    "Lease",
    "LeaseConflict",
    "claim",
    "claim_first_free",
    "held_leases",
]

_POLL_SECONDS = 0.05
_COMMAND_LIMIT = 8192
#: How often a claim retries a lock file that the scope collector unlinked under it.
_RELOCK_ATTEMPTS = 10


class LeaseConflict(LeaseError):
    """Some requested CPUs are held by another live lease."""

    def __init__(self, message: str, busy: frozenset[int], holders: Sequence[LeaseInfo]):
        super().__init__(message)
        self.busy = busy
        self.holders = tuple(holders)

    def __reduce__(self):
        # A pool worker's claim error travels to the caller pickled: keep every field.
        return type(self), (str(self), self.busy, self.holders)


def _lock_one(directory: Path, cpu: int) -> int | None:
    """Lock one CPU's file: its open descriptor, or None while another lease holds it."""
    for _ in range(_RELOCK_ATTEMPTS):
        fd = open_file(lock_path(directory, cpu))
        if fd is None:
            continue
        try:
            if not _platform.lock_exclusive(fd):
                os.close(fd)
                return None
            if os.fstat(fd).st_nlink > 0:
                return fd
        except OSError as error:
            os.close(fd)
            raise registry_failure("lock", lock_path(directory, cpu), error) from None
        # The scope collector unlinked the file between our open() and our flock(): a lock
        # on it would guard nothing, so lock the file now at that path instead.
        os.close(fd)
    return None  # fail closed: count the CPU as busy


#: The key of a sharer's own record file among a lease's lock descriptors (no CPU's).
SHARE_KEY = -1


@dataclass(eq=False)
class Lease:
    """A held set of CPUs. Release it (or use it as a context manager) when done."""

    info: LeaseInfo
    _fds: dict[int, int] = field(repr=False)
    #: The host registry's locks of a top-level lease (none in the per-user registry).
    _host_fds: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def cores(self) -> frozenset[int]:
        """CPUs this lease covers (shared ones included)."""
        return self.info.cores

    @property
    def lease_id(self) -> str:
        """Unique id; nested pools use it as their scope."""
        return self.info.lease_id

    @property
    def held(self) -> bool:
        """Whether this process still holds the lease."""
        return bool(self._fds)

    def fds(self) -> list[int]:
        """The lock descriptors (to hand the lease to a program we ``exec``)."""
        return [*self._fds.values(), *self._host_fds.values()]

    def release(self) -> None:
        """Drop the lease (idempotent) and clean up the scope its nested pools used."""
        with _TABLE_LOCK:
            STATE.leases.pop(self.lease_id, None)
            fds = [*self._fds.values(), *self._host_fds.values()]
            shared_record = SHARE_KEY in self._fds
            self._fds, self._host_fds = {}, {}
        if shared_record:
            with contextlib.suppress(OSError):
                os.unlink(scope_dir(self.info.scope) / f"share-{self.lease_id}.lock")
        _close_all(fds)
        remove_idle_scope(self.info)

    def forget_inherited(self) -> None:
        """In a forked child: let go of the parent's lease without releasing it.

        The child shares the parent's lock descriptions; closing its copies keeps the
        parent's locks intact (no ``LOCK_UN``) and makes sure the child never holds them alone.
        """
        fds = [*self._fds.values(), *self._host_fds.values()]
        self._fds, self._host_fds = {}, {}
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


#: Guards this process's table of held leases (``STATE.leases``).
_TABLE_LOCK = PinLock("lease table")


def held_leases() -> list[Lease]:
    """Leases held by this process."""
    with _TABLE_LOCK:
        return list(STATE.leases.values())


def claim(
    cores: Iterable[int],
    *,
    scope: str = "",
    share: bool = False,
    timeout: float = 0.0,
    command: str | None = None,
    owner: int | None = None,
    loan: bool = False,
) -> Lease:
    """Take a lease on exactly ``cores``.

    Waits up to ``timeout`` seconds for busy CPUs to become free, then raises
    :class:`LeaseConflict` naming them and their holders, unless ``share`` is true: then the
    busy CPUs are used without holding them (the lease records them as shared) and the
    caller is expected to warn. ``owner`` is the pid of the process that planned the pool
    this lease belongs to (a pool's own workers do not count as busy when it plans again).
    All or nothing: a claim that fails holds none of the CPUs. ``loan``: cores borrowed from
    an idle slot (:mod:`.lending`), given back as soon as another claim wants them.
    """
    cores = _lease_set(cores)
    directory = scope_dir(scope)
    host = None if scope else find_host_registry()
    with ClaimWait(scope, timeout, _only_loans) as wait:
        while True:
            fds, busy = _try_lock_all(directory, cores, host)
            if not busy or share or not wait.again(directory, busy):
                break
            _close_all(fds)
            time.sleep(_POLL_SECONDS)
    if busy and not share:
        _close_all(fds)
        raise _conflict(directory, busy, scope, host)
    lease = _hold(
        cores, fds, directory, scope=scope, shared=busy, command=command, owner=owner, loan=loan
    )
    collect_after_claim(scope)
    return lease


def claim_first_free(
    candidates: Sequence[Iterable[int]],
    *,
    scope: str = "",
    timeout: float = 0.0,
    owner: int | None = None,
) -> Lease:
    """Lease the first candidate core set that is entirely free, waiting up to ``timeout``."""
    candidates = [_lease_set(c) for c in candidates]
    if not candidates:
        raise LeaseError("no candidate core sets to claim from; plan at least one slot")
    with ClaimWait(scope, timeout, _only_loans) as wait:
        return _first_free(candidates, scope, owner, wait)


def _first_free(candidates: list[frozenset[int]], scope: str, owner: int | None, wait) -> Lease:
    while True:
        # Resolved each round: the scope folder is removed when its last lease ends.
        directory = scope_dir(scope)
        host = None if scope else find_host_registry()
        all_busy: set[int] = set()
        for cores in candidates:
            fds, busy = _try_lock_all(directory, cores, host)
            if not busy:
                lease = _hold(
                    cores, fds, directory, scope=scope, shared=busy, command=None, owner=owner
                )
                collect_after_claim(scope)
                return lease
            _close_all(fds)
            all_busy |= busy
        if not wait.again(directory, frozenset(all_busy)):
            timeout = wait.timeout
            # Who holds what is read once, for the message, not on every poll.
            last = _conflict(directory, busy, scope, host, remedy=False)
            raise LeaseConflict(
                f"none of the {len(candidates)} planned core sets is free "
                f"({'; '.join(format_cpu_list(c) for c in candidates)}) within {timeout:g}s; "
                f"last: {last}",
                last.busy,
                last.holders,
            )
        time.sleep(_POLL_SECONDS)


def _only_loans(directory: Path, busy: frozenset[int], scope: str) -> bool:
    """Whether loans (:mod:`.lending`) hold every CPU of ``busy``."""
    lent = frozenset().union(
        *(info.cores for info in holders_of(directory, sorted(busy), scope) if info.loan)
    )
    return bool(busy) and busy <= lent


def _lease_set(cores: Iterable[int]) -> frozenset[int]:
    cores = frozenset(cores)
    if not cores:
        raise LeaseError("cannot lease an empty set of CPUs; name at least one CPU")
    odd = {cpu for cpu in cores if not (isinstance(cpu, int) and 0 <= cpu < CPU_LIMIT)}
    if odd:
        raise LeaseError(
            f"cannot lease CPUs {sorted(odd, key=str)}: CPU ids are integers from 0 to "
            f"{CPU_LIMIT - 1}"
        )
    return cores


def _conflict(
    directory: Path,
    busy: frozenset[int],
    scope: str,
    host: HostRegistry | None = None,
    *,
    remedy: bool = True,
) -> LeaseConflict:
    holders = holders_of(directory, busy, scope)
    if host is not None:
        holders = merge_host(holders, host_holders(host, busy))
    held = f"CPUs {format_cpu_list(busy)} are held by " + "; ".join(map(describe_holder, holders))
    advice = ". Pick other CPUs, wait for those jobs, or allow sharing" if remedy else ""
    return LeaseConflict(held + advice, busy, holders)


def _hold(
    cores: frozenset[int],
    fds: _Locks,
    directory: Path,
    *,
    scope: str,
    shared: frozenset[int],
    command: str | None,
    owner: int | None,
    loan: bool = False,
) -> Lease:
    """Record the lease in every lock file it holds and keep it in this process's table.

    A record that cannot be written (disk full, read-only) releases every lock taken so far:
    a claim holds all its CPUs or none.
    """
    info = LeaseInfo(
        lease_id=uuid.uuid4().hex[:12],
        pid=os.getpid(),
        cores=cores,
        command=(command if command is not None else _own_command())[:_COMMAND_LIMIT],
        since=time.time(),
        scope=scope,
        shared=shared,
        owner=owner,
        uid=os.geteuid(),
        loan=loan,
    )
    record = json.dumps(info.to_dict()).encode()
    try:
        for cpu, fd in fds.items():
            try:
                write_record(fd, record)
            except OSError as error:
                path = lock_path(directory, cpu)
                raise registry_failure("write the lease record into", path, error) from None
    except BaseException:
        _close_all(fds)
        raise
    if fds.host is not None:
        # What other users may read: no command (theirs to see only in their own records).
        public = {key: value for key, value in info.to_dict().items() if key != "command"}
        for cpu in fds.host_fds:
            fds.host.write_record(cpu, json.dumps(public).encode())
    held = dict(fds)
    if not held:
        held[SHARE_KEY] = _share_record(directory, info.lease_id, record)
    lease = Lease(info, held, dict(fds.host_fds))
    with _TABLE_LOCK:
        STATE.leases[info.lease_id] = lease
    return lease


class _Locks(dict):
    """The lock descriptors a claim took: per-user files by CPU, and (``host_fds``) the host
    registry's, taken first."""

    def __init__(self, host: HostRegistry | None) -> None:
        super().__init__()
        self.host = host
        self.host_fds: dict[int, int] = {}


def _try_lock_all(
    directory: Path, cores: frozenset[int], host: HostRegistry | None = None
) -> tuple[_Locks, frozenset]:
    """Lock every CPU of ``cores`` that is free: the host registry's lock first (it decides
    between users), then this user's own file (its record, nested scopes)."""
    fds = _Locks(host)
    busy = set()
    try:
        for cpu in sorted(cores):
            if host is not None:
                host_fd = host.open_lock(cpu)
                if not _platform.lock_exclusive(host_fd):
                    os.close(host_fd)
                    busy.add(cpu)
                    continue
                fds.host_fds[cpu] = host_fd
            fd = _lock_one(directory, cpu)
            if fd is None:
                # Held by a process of ours that claimed without the host registry.
                if host is not None:
                    os.close(fds.host_fds.pop(cpu))
                busy.add(cpu)
            else:
                fds[cpu] = fd
    except BaseException:
        _close_all(fds)
        raise
    return fds, frozenset(busy)


def _share_record(directory: Path, lease_id: str, record: bytes) -> int:
    """A lease that shares every CPU holds no CPU's lock: its record goes in a file of its
    own (``share-ID.lock``), locked while it lives, so that the survey sees it (and does not
    take its pinned holder for another job's process). Written under another name and
    renamed when locked: a reader never finds it unlocked while its holder lives."""
    part, path = directory / f"share-{lease_id}.part", directory / f"share-{lease_id}.lock"
    fd = open_file(part)
    if fd is None:
        raise registry_failure("create a sharer's record in", directory, FileNotFoundError())
    try:
        _platform.lock_exclusive(fd)
        write_record(fd, record)
        os.rename(part, path)
    except OSError as error:
        os.close(fd)
        raise registry_failure("write a sharer's record into", path, error) from None
    return fd


def _close_all(fds: dict[int, int] | list[int]) -> None:
    if isinstance(fds, _Locks):
        host_fds, fds.host_fds = fds.host_fds, {}
        _close_all(list(host_fds.values()))
    for fd in fds.values() if isinstance(fds, dict) else fds:
        os.close(fd)


def _own_command() -> str:
    return " ".join(sys.argv) or sys.executable
