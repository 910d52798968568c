"""What a lease record says: :class:`LeaseInfo`, and how a record is read without trusting it."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import LEASE_ID, is_cpu_list, is_pid, is_timestamp

__all__ = ["LeaseInfo", "lease_from_record", "unknown_holder"]


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease file says about its holder (``pid`` is None when the record is unreadable).

    ``uid``: the holder's user, where known (a host registry's record, or /proc for a
    process seen by its affinity). ``source``: ``"lease"`` for a registry's record,
    ``"affinity"`` for a process holding no lease here whose CPU affinity is narrower than
    the job's CPUs (another user's job, ``taskset``, ``numactl``, a container's cpuset).
    ``loan``: cores a pool worker borrowed from an idle sibling's slot while its task runs
    (:mod:`.lending`); they come back as soon as a claim wants them.
    """

    lease_id: str
    pid: int | None
    cores: frozenset[int]
    command: str
    since: float | None = None
    scope: str = ""
    shared: frozenset[int] = frozenset()
    owner: int | None = None
    uid: int | None = None
    source: str = "lease"
    loan: bool = False

    def to_dict(self) -> dict:
        """Plain-data form, written into lock files and shown by ``status --json``."""
        return {
            "lease_id": self.lease_id,
            "pid": self.pid,
            "cores": sorted(self.cores),
            "command": self.command,
            "since": self.since,
            "scope": self.scope,
            "shared": sorted(self.shared),
            "owner": self.owner,
            "uid": self.uid,
            "source": self.source,
            "loan": self.loan,
        }


def lease_from_record(data: dict, cpu: int, scope: str, uid: int | None) -> LeaseInfo | None:
    """The lease a record describes, or None if a field is missing, odd or out of range.

    ``uid`` is the owner of the file it was read from: a record's own ``uid`` is not read.
    """
    cores, shared = data.get("cores"), data.get("shared", [])
    owner = data.get("owner")
    valid = (
        isinstance(data.get("lease_id"), str)
        and LEASE_ID.fullmatch(data["lease_id"])
        and is_pid(data.get("pid"))
        and is_cpu_list(cores)
        and cpu in cores  # a record in CPU 2's file that does not claim CPU 2 is not ours
        and is_cpu_list(shared)
        and set(shared) <= set(cores)
        and isinstance(data.get("command"), str)
        and is_timestamp(data.get("since"))
        and (owner is None or is_pid(owner))
    )
    if not valid:
        return None
    return LeaseInfo(
        lease_id=data["lease_id"],
        pid=data["pid"],
        cores=frozenset(cores),
        command=data["command"],
        since=float(data["since"]),
        scope=scope,
        shared=frozenset(shared),
        owner=owner,
        uid=uid,
        loan=data.get("loan") is True,
    )


def unknown_holder(cpu: int, scope: str) -> LeaseInfo:
    """The holder of a held lock whose record cannot be trusted: an unknown process."""
    return LeaseInfo(
        f"unknown-cpu-{cpu}", None, frozenset({cpu}), "(unreadable record)", None, scope
    )
