"""The options every entry point takes, validated once, in one wording.

The joblib backend, the Dask plugin and preload, the runner and ``run`` all describe a slot
the same way: how many cores per worker, which CPUs to keep free, what to do when the cores
do not suffice, how long to wait for a claim, and (Dask) whether a worker that cannot be
pinned may still run. :class:`PinOptions` holds them; the small ``check_*`` functions are
the only validators of counts, CPU sets and timeouts in the package, and
:func:`check_option` (one validator per option) is what the command lines that spell these
options derive their own checks from.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace

from ..core.cpuset import CpuListError, format_cpu_list, parse_cpu_list

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "FAIL_POLICIES",
    "OVERSUBSCRIBE_POLICIES",
    "OptionsError",
    "PinOptions",
    "check_cores_per_worker",
    "check_count",
    "check_cpus",
    "check_option",
    "check_seconds",
    "reject_unknown",
]

#: Seconds a new worker waits to claim its slot (a predecessor may still be exiting, another
#: job may hold the cores a moment longer). The one default of every entry point.
DEFAULT_CLAIM_TIMEOUT = 30.0

#: What to do with more workers than free cores: ``"clamp"`` runs as many as fit,
#: ``"error"`` refuses, ``"share"`` lets workers share cores (warning), ``"wait"`` waits for
#: other jobs to free enough cores.
OVERSUBSCRIBE_POLICIES = ("clamp", "error", "share", "wait")

#: ``"closed"``: a Dask worker that cannot be pinned refuses to start (the default).
#: ``"open"``: it logs one warning, runs unpinned and says so in the placement view.
FAIL_POLICIES = ("closed", "open")


class OptionsError(ValueError):
    """An option has a value that is not allowed (the message names value and remedy)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(name: str, value: object, *, none_means: str | None = None) -> int | None:
    """Return ``value`` if it is a positive integer (or None where ``none_means`` says what
    None stands for); raise :class:`OptionsError` otherwise."""
    if value is None and none_means is not None:
        return None
    if not _is_int(value) or value < 1:
        allowed = "a positive integer" + (f" or None ({none_means})" if none_means else "")
        raise OptionsError(f"{name} must be {allowed}; got {value!r}")
    return value


def check_cpus(name: str, value: Iterable[int] | str) -> frozenset[int]:
    """Return a CPU set given as CPU numbers or a kernel list like ``"0,8-9"``."""
    if isinstance(value, str):
        try:
            return parse_cpu_list(value)
        except CpuListError as error:
            raise OptionsError(f"{name}: {error}") from None
    try:
        cpus = frozenset(value)
    except TypeError:
        raise OptionsError(
            f"{name} must be CPU numbers or a CPU list like '0,8-9'; got {value!r}"
        ) from None
    bad = [c for c in cpus if not _is_int(c) or c < 0]
    if bad:
        raise OptionsError(
            f"{name} must hold CPU numbers (non-negative integers) or be a list like '0,8-9'; "
            f"got {sorted(bad, key=str)!r}"
        )
    return cpus


def check_seconds(name: str, value: object) -> float:
    """Return ``value`` as seconds if it is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise OptionsError(f"{name} must be a finite number of seconds >= 0; got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise OptionsError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_cores_per_worker(name: str, value: object) -> int | None:
    """Return the physical cores per worker: a positive integer, or None for ``"auto"``
    (and None itself): the entry point's default size."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    if not _is_int(value) or value < 1:
        raise OptionsError(
            f"{name} must be a positive integer or 'auto' (the default size); got {value!r}"
        )
    return value


def _check_policy(name: str, value: object) -> str | None:
    return None if value is None else check_choice(name, value, OVERSUBSCRIBE_POLICIES)


def _check_fail(name: str, value: object) -> str:
    return check_choice(name, value, FAIL_POLICIES)


#: The one validator of each option: ``(name in messages, value) -> normalised value``.
_CHECKS = {
    "cores_per_worker": check_cores_per_worker,
    "reserve": check_cpus,
    "oversubscribe": _check_policy,
    "claim_timeout": check_seconds,
    "fail": _check_fail,
}


def check_option(option: str, value: object, name: str | None = None) -> object:
    """Validate ``value`` for the :class:`PinOptions` field ``option`` and return it
    normalised (``"auto"`` becomes None, a CPU list a set, a number of seconds a float).

    ``name`` is how messages spell the option (``--pin-claim-timeout`` on a command line;
    default: the keyword). Raises :class:`OptionsError`. Every front door that spells these
    options itself (the Dask preload's command line) validates through this, so that it
    refuses exactly what :class:`PinOptions` refuses.
    """
    return _CHECKS[option](name or option, value)


def reject_unknown(names: Iterable[str], known: Iterable[str], where: str) -> None:
    """Raise ``TypeError`` for the first unknown keyword, naming the closest known one."""
    known = sorted(set(known))
    for name in names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise TypeError(
            f"{where} got an unexpected option {name!r}{hint} Valid options: {', '.join(known)}"
        )


@dataclass(frozen=True)
class PinOptions:
    """How workers size, place and claim their slots.

    ``cores_per_worker``: physical cores per worker (None or ``"auto"``: the entry point's
    default: share the free cores among the workers, or one CPU per Dask task thread).
    ``reserve``: CPUs no worker may use. ``oversubscribe``: one of
    :data:`OVERSUBSCRIBE_POLICIES` (None: the entry point's default). ``claim_timeout``:
    seconds a worker waits for a free slot. ``fail``: one of :data:`FAIL_POLICIES` (Dask
    workers).
    """

    cores_per_worker: int | None = None
    reserve: frozenset[int] = field(default_factory=frozenset)
    oversubscribe: str | None = None
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT
    fail: str = "closed"

    def __post_init__(self) -> None:
        for option in _CHECKS:
            object.__setattr__(self, option, check_option(option, getattr(self, option)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, as keyword arguments spell them."""
        return tuple(f.name for f in fields(PinOptions))

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, object], where: str) -> PinOptions:
        """Build from keyword arguments; unknown names raise ``TypeError`` (see
        :func:`reject_unknown`)."""
        reject_unknown(keywords, cls.names(), where)
        return cls(**keywords)

    def updated(self, **changes) -> PinOptions:
        """A copy with ``changes`` applied and validated."""
        return replace(self, **changes) if changes else self

    def policy(self, default: str) -> str:
        """The oversubscription policy in force: the option, else ``default``."""
        return self.oversubscribe if self.oversubscribe is not None else default

    def describe(self) -> str:
        """One line for logs, spelled as on the command line."""
        cores = "auto" if self.cores_per_worker is None else self.cores_per_worker
        reserve = format_cpu_list(self.reserve) or "none"
        policy = self.oversubscribe or "clamp"
        return (
            f"cores-per-worker={cores}, reserve={reserve}, oversubscribe={policy}, "
            f"fail={self.fail}, claim-timeout={self.claim_timeout:g}"
        )
