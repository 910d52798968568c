"""Fair share: a job that arrives on a host held by other jobs' pinned pools gets its share at
their next task boundary, instead of waiting for their whole call.

**Fair** means equal CPUs per job: a job is a pool's planning process (its workers' leases
name it as their ``owner``), or the process itself for a lease of its own (``run``, a Dask
worker) or a pinned process seen in ``/proc``. With ``J`` jobs holding or asking for the
job's CPUs, each job's share is ``max(1, CPUS // J)``: nobody is ever left with nothing
(more jobs than CPUs leave the newcomer waiting, as before).

- **Asking.** A joblib pool whose plan waits for, or is clamped by, other jobs' pool
  workers posts a *share want* (:func:`.wants.post_want` with ``share=True``) and keeps it
  until its call ends.
- **Shrinking.** At the end of each task, a pool worker of another job looks for share
  wants; while its pool holds more than its share plus this worker's slot, the worker whose
  slot comes last among its pool's gives it back (one at a time: the order is read from
  the registry, so two workers never both yield for one share). Its next task waits, with
  no time limit, until its pool holds less than its share (or nobody asks any more), and
  then claims a free slot of its pool (up to the claim timeout): its own again once the
  newcomer's call ended. Without a limit because that wait always ends: a pool keeps at
  least one worker, whose slot frees when the pool runs out of other tasks.
- **Growing back.** Once the share want is withdrawn (the newcomer's call ended), the
  yielded workers claim their slots as soon as the newcomer's idle workers release them.

Policies keep their meaning: ``oversubscribe="error"`` refuses at once and ``"share"``
shares at once (neither waits, so neither asks); ``clamp`` and ``wait`` ask while they
wait.

Between users: a top-level request goes in the host registry where an admin set one up
(:mod:`.host_wants`), and every user's workers hear it; without one, wants live in the
user's private registry, and a newcomer of another user waits (or clamps) as before. A
worker that yielded and finds its slot unclaimed :data:`UNCLAIMED_SECONDS` later takes it
back and stops hearing whoever asked (:func:`asker_of`): asking without taking cannot
keep other jobs small.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .holders import list_leases
from .host_wants import host_wants
from .host_wants import withdraw as withdraw_host_want
from .lease_info import LeaseInfo
from .pool import PoolPlan
from .view import HostView
from .wants import Wants, post_want, withdraw_want

__all__ = ["UNCLAIMED_SECONDS", "PoolShare", "ShareRequest", "asker_of", "fair_share", "job_of"]


def job_of(info: LeaseInfo) -> int | None:
    """The job a holder belongs to: its pool's planning process, else itself."""
    return info.owner if info.owner is not None else info.pid


def fair_share(cpus: int, jobs: int) -> int:
    """Each job's CPUs when ``jobs`` jobs share ``cpus`` CPUs: equal, at least one."""
    return max(1, cpus // max(jobs, 1))


def jobs_among(holders: Iterable[LeaseInfo], me: int) -> set[int]:
    """The jobs other than ``me`` that ``holders`` belong to."""
    return {job for job in map(job_of, holders) if job is not None and job != me}


#: How long a slot given to a job that asks may stay unclaimed before the worker takes it
#: back and stops yielding to that request: an asker that takes nothing (a job that ended
#: badly, another user's abuse) costs each worker of a pool one wait, not its whole call.
#: Long enough for a legitimate asker on a loaded machine: it decides after a grace of up
#: to a second, then starts a worker process (0.1-0.3 s quiet, seconds under load).
UNCLAIMED_SECONDS = 5.0


def asker_of(want: str) -> str:
    """Who asks, as the start of a request's name: another user (a host registry request,
    ``share-UID-PID-TOKEN.json``) as a whole, so new processes of theirs are not heard
    anew; a process of this user (``share-UID-PID-``, or ``PID-`` in the user's own
    registry) alone."""
    parts = want.split("-")
    if parts[0] != "share":
        return f"{parts[0]}-"
    if parts[1] != str(os.geteuid()):
        return f"share-{parts[1]}-"
    return f"share-{parts[1]}-{parts[2]}-"


class PoolShare:
    """One pool worker's side of fair share (see the module docstring); ``wants`` is its
    keeper's look at its scope's wants."""

    def __init__(self, pool: PoolPlan, wants: Wants) -> None:
        self.pool = pool
        self.wants = wants
        #: Who asked and left the slot this worker yielded unclaimed (:func:`asker_of`):
        #: not heard again.
        self.ignored: set[str] = set()
        self._yielded_to: set[str] = set()

    def should_yield(self, home: frozenset[int]) -> bool:
        """At a task's end: whether this worker gives its slot ``home`` to a job that asks."""
        state = self._state()
        if state is None:
            return False
        held, share, mine = state
        last = max(mine, key=lambda info: sorted(info.cores))
        if last.cores == home and held - len(home) >= share:
            self._yielded_to = set(self._askers())
            return True
        return False

    def may_take(self) -> bool:
        """For a worker that yielded: whether its pool may take a slot again."""
        state = self._state()
        return state is None or state[0] < state[1]

    def unclaimed(self) -> None:
        """The slot this worker yielded stayed free for :data:`UNCLAIMED_SECONDS`: stop
        yielding to whoever asked (:func:`asker_of`)."""
        self.ignored |= {asker_of(name) for name in self._yielded_to}

    def _askers(self) -> dict[str, int]:
        askers = self.wants.askers()
        return {
            name: pid
            for name, pid in askers.items()
            if not any(name.startswith(who) for who in self.ignored)
        }

    def _state(self) -> tuple[int, int, list[LeaseInfo]] | None:
        """(CPUs the pool holds, its share, its workers' leases), or None where no other job
        asks for a share."""
        owner = self.pool.owner
        askers = set(self._askers().values()) - {owner}
        if not askers:
            return None
        cpus = self.pool.cpus
        leases = [i for i in list_leases(self.pool.scope) if not i.loan and i.cores & cpus]
        mine = [info for info in leases if info.owner == owner]
        if not mine:
            return None
        jobs = 1 + len(jobs_among(leases, owner) | askers)
        held = len(frozenset().union(*(info.cores - info.shared for info in mine)))
        return held, fair_share(len(cpus), jobs), mine


class ShareRequest:
    """A job's request for its fair share: asked while its plan waits for other jobs' cores
    (:func:`.lifecycle.decide_waiting`'s ``on_wait``), kept until :meth:`end` (the end of
    the call). A top-level request goes where every user's workers hear it, the host
    registry, where one is in use (:mod:`.host_wants`)."""

    def __init__(self) -> None:
        self._want: Path | None = None
        self._withdraw: Callable[[Path | None], None] = withdraw_want
        self._pid = os.getpid()  # a forked child's copy never withdraws the parent's

    def ask(self, view: HostView) -> None:
        """Ask for a share of the CPUs other jobs hold (once; later calls do nothing)."""
        self.ask_for(view.scope, view.other_jobs)

    def ask_for(self, scope: str, cpus: frozenset[int], job: int | None = None) -> None:
        """Ask for a share of ``cpus`` in lease scope ``scope``, for ``job`` (a pool
        worker asks for its planner's job; default this process's own)."""
        if self._want is not None:
            return
        self._pid = os.getpid()
        host = host_wants() if not scope else None
        if host is not None:
            self._want, self._withdraw = host.post(cpus, job), withdraw_host_want
        if self._want is None:
            self._want = post_want(scope, cpus, share=True, job=job)
            self._withdraw = withdraw_want

    def end(self) -> None:
        """Withdraw the request, if any (only in the process that made it)."""
        want, self._want = self._want, None
        if os.getpid() == self._pid:
            self._withdraw(want)
