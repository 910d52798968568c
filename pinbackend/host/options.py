"""The options every entry point takes: declared once, validated once, in one wording.

The joblib backend, the Dask plugins and preload, the runner and ``run`` all describe a slot
the same way: how many cores per worker, which CPUs to keep free, what to do when the cores
do not suffice, how long to wait for a claim, and (Dask) whether a worker that cannot be
pinned may still run. Each field of :class:`PinOptions` is declared once (:func:`declare`):
its :class:`Kind` of value (the check, how a command line's text becomes a value, examples),
its default, help text, flag, the front doors that take it (:data:`FRONT_DOORS`) and its old
spellings. Every front door derives its interface from these declarations
(:meth:`PinOptions.declared`): joblib's and the Dask plugins' keyword arguments, the
runner's and ``run``'s flags (:func:`pinbackend.cli._common.declared_arguments`), the Dask
preload's click options. The ``check_*`` functions here validate every option of every
front door (joblib's own ``idle_worker_timeout`` and ``inner_max_num_threads`` too, and the
counts, CPU lists and timeouts of the subcommands), and one :class:`OptionsError` words
every refusal. (The pure planner, :mod:`pinbackend.core.planner`, checks its own arguments.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ..core.cpuset import CpuListError, format_cpu_list, parse_cpu_list
from ._declare import (
    FRONT_DOORS,
    Alias,
    Kind,
    Option,
    OptionsError,
    declare,
    declared,
    redeclare,
    reject_unknown,
)

__all__ = [
    "COUNT",
    "CPUS",
    "DEFAULT_CLAIM_TIMEOUT",
    "FAIL_POLICIES",
    "FRONT_DOORS",
    "IDLE_WORKER_TIMEOUT",
    "INNER_MAX_NUM_THREADS",
    "OTHER_PINS_POLICIES",
    "OVERSUBSCRIBE_POLICIES",
    "SECONDS",
    "SIZE",
    "SOME_CPUS",
    "SWITCH",
    "Alias",
    "Kind",
    "Option",
    "OptionsError",
    "PinOptions",
    "check_choice",
    "check_cores_per_worker",
    "check_count",
    "check_cpus",
    "check_job_cpus",
    "check_option",
    "check_restart",
    "check_seconds",
    "check_some_cpus",
    "check_switch",
    "choice",
    "declare",
    "redeclare",
    "reject_unknown",
    "spelled",
]

#: Seconds a new worker waits to claim its slot (a predecessor may still be exiting, another
#: job may hold the cores a moment longer). The one default of every entry point but ``run``.
DEFAULT_CLAIM_TIMEOUT = 30.0

#: What to do with more workers than free cores: ``"clamp"`` runs as many as fit,
#: ``"error"`` refuses, ``"share"`` lets workers share cores (warning), ``"wait"`` waits for
#: other jobs to free enough cores.
OVERSUBSCRIBE_POLICIES = ("clamp", "error", "share", "wait")

#: ``"closed"``: a Dask worker that cannot be pinned refuses to start (the default).
#: ``"open"``: it logs one warning, runs unpinned and says so in the placement view.
FAIL_POLICIES = ("closed", "open")

#: ``"avoid"``: CPUs other processes are pinned to (without a lease here) count as held.
#: ``"ignore"``: only the registry's leases count (pinbackend before it looked at /proc).
OTHER_PINS_POLICIES = ("avoid", "ignore")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(name: str, value: object, *, none_means: str | None = None) -> int | None:
    """Return ``value`` if it is a positive integer (or None where ``none_means`` says what
    None stands for); raise :class:`OptionsError` otherwise."""
    if value is None and none_means is not None:
        return None
    if not _is_int(value) or value < 1:
        allowed = "a positive integer" + (f" or None ({none_means})" if none_means else "")
        raise OptionsError.refuse(name, f"must be {allowed}", value)
    return value


def check_cpus(name: str, value: Iterable[int] | str) -> frozenset[int]:
    """Return a CPU set given as CPU numbers or a kernel list like ``"0,8-9"``."""
    if isinstance(value, str):
        try:
            return parse_cpu_list(value)
        except CpuListError as error:
            raise OptionsError.invalid(name, str(error)) from None
    try:
        cpus = frozenset(value)
    except TypeError:
        raise OptionsError.refuse(
            name, "must be CPU numbers or a CPU list like '0,8-9'", value
        ) from None
    bad = [c for c in cpus if not _is_int(c) or c < 0]
    if bad:
        raise OptionsError.refuse(
            name,
            "must hold CPU numbers (non-negative integers) or be a list like '0,8-9'",
            sorted(bad, key=str),
        )
    return cpus


def check_some_cpus(name: str, value: Iterable[int] | str) -> frozenset[int]:
    """Return a CPU set (as :func:`check_cpus`) that names at least one CPU."""
    cpus = check_cpus(name, value)
    if not cpus:
        raise OptionsError.refuse(name, "must name at least one CPU, e.g. '0-3,8'", value)
    return cpus


def check_seconds(name: str, value: object) -> float:
    """Return ``value`` as seconds if it is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise OptionsError.refuse(name, "must be a finite number of seconds >= 0", value)
    return float(value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise OptionsError.refuse(name, f"must be one of {', '.join(map(repr, choices))}", value)
    return value


def check_cores_per_worker(name: str, value: object) -> int | None:
    """Return the physical cores per worker: a positive integer, or None for ``"auto"``
    (and None itself): the entry point's default size."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    if not _is_int(value) or value < 1:
        raise OptionsError.refuse(
            name, "must be a positive integer or 'auto' (the default size)", value
        )
    return value


def check_switch(name: str, value: object) -> bool:
    """Return ``value`` if it is True or False."""
    if not isinstance(value, bool):
        raise OptionsError.refuse(name, "must be True or False", value)
    return value


def check_restart(name: str, value: object) -> bool | str:
    """Return a Dask nanny plugin's ``restart``: True, False or ``"auto"``."""
    if value not in (True, False, "auto"):
        raise OptionsError.refuse(name, "must be True, False or 'auto'", value)
    return value


def check_job_cpus(cores: frozenset[int] | None, reserve: frozenset[int]) -> None:
    """Refuse a job's ``cores`` that its ``reserve`` takes whole (the runner's two options)."""
    if cores is not None and cores <= reserve:
        raise OptionsError(
            f"every CPU of cores ({format_cpu_list(cores)}) is reserved "
            f"({format_cpu_list(reserve)}); reserve fewer CPUs or name more cores"
        )


def _number(text: str) -> int | float | str:
    """``"2"`` -> 2, ``"0.5"`` -> 0.5, ``"nan"`` -> nan; other text stays text (refused by
    the check, which then names it as given)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _seconds_text(value: float) -> str:
    return repr(value).removesuffix(".0")


COUNT = Kind(check_count, "N", _number, good=("1", "64"), bad=("0", "-2", "1.5", "zz"))
SIZE = Kind(
    check_cores_per_worker,
    "K",
    _number,
    show=lambda value: "auto" if value is None else value,
    good=("auto", "1", "64"),
    bad=("0", "-2", "1.5", "zz"),
)
SECONDS = Kind(
    check_seconds,
    "SECONDS",
    _number,
    show=_seconds_text,
    good=("0", "0.5", "30"),
    bad=("nan", "inf", "-inf", "-1", "zz"),
)
CPUS = Kind(
    check_cpus,
    "LIST",
    show=format_cpu_list,
    good=("", "0", "0-1,8"),
    bad=("0,,1", "0,", ",0", "0-x", "-1"),
)
SOME_CPUS = Kind(
    check_some_cpus, "LIST", show=format_cpu_list, good=("0", "0-1,8"), bad=("", "0,,1", "0-x")
)
SWITCH = Kind(check_switch, switch=True)


def choice(choices: tuple[str, ...]) -> Kind:
    """The kind of an option that takes one of ``choices``."""
    return Kind(
        functools.partial(_check_choice_of, choices),
        "{" + ",".join(choices) + "}",
        good=choices,
        bad=("sometimes",),
        choices=choices,
    )


def _check_choice_of(choices: tuple[str, ...], name: str, value: object) -> str:
    return check_choice(name, value, choices)


_EVERYWHERE = FRONT_DOORS
_POOLS = ("joblib", "dask", "preload", "runner")
_DASK = ("dask", "preload")


@dataclass(frozen=True)
class PinOptions:
    """How workers size, place and claim their slots.

    ``cores_per_worker``: physical cores per worker (None or ``"auto"``: the entry point's
    default: share the free cores among the workers, or one CPU per Dask task thread).
    ``reserve``: CPUs no worker may use. ``oversubscribe``: one of
    :data:`OVERSUBSCRIBE_POLICIES` (None: the entry point's default). ``claim_timeout``:
    seconds a worker waits for a free slot. ``fail``: one of :data:`FAIL_POLICIES` (Dask
    workers). Each field is declared with :func:`declare`; see :meth:`declared`.
    """

    cores_per_worker: int | None = declare(
        SIZE,
        None,
        "physical cores of each worker; 'auto' (the default): the free cores shared among "
        "the workers (joblib, the runner), or one CPU per task thread (Dask)",
        flag="--cores-per-worker",
        where=_POOLS,
        aliases=(Alias("--pin-cores-per-worker", "preload"),),
        nested=False,
    )
    reserve: frozenset[int] = declare(
        CPUS,
        frozenset(),
        "CPUs no worker may use (a daemon's, say), as a list like '0' or '0-1,8'",
        flag="--reserve",
        where=_EVERYWHERE,
        aliases=(Alias("--pin-reserve", "preload"),),
        nested=False,
        joined=frozenset.union,
    )
    oversubscribe: str | None = declare(
        choice(OVERSUBSCRIBE_POLICIES),
        None,
        "what to do when the free cores do not suffice: 'clamp' (the default) runs as many "
        "workers as fit: a pool gets fewer, a worker that pins itself (Dask's, run's) waits "
        "up to the claim timeout, then fails (Dask: closes, with one warning per host); "
        "'error' refuses; 'wait' waits for other jobs to free cores; 'share' shares cores, "
        "with a warning",
        flag="--oversubscribe",
        where=_EVERYWHERE,
        none_means="the entry point's default",
        aliases=(Alias("--pin-oversubscribe", "preload"), Alias("--share", "run", "share")),
    )
    claim_timeout: float = declare(
        SECONDS,
        DEFAULT_CLAIM_TIMEOUT,
        "seconds a starting worker waits for cores that other jobs hold before it fails",
        flag="--claim-timeout",
        where=_EVERYWHERE,
        aliases=(Alias("--pin-claim-timeout", "preload"), Alias("--wait", "run")),
    )
    other_pins: str = declare(
        choice(OTHER_PINS_POLICIES),
        "avoid",
        "CPUs that running processes holding no lease here are pinned to (another user's "
        "job, taskset, numactl, a container's cpuset), seen in /proc: 'avoid' (the default) "
        "treats them like other jobs' leases while those processes are busy; 'ignore' plans "
        "as if they were not there",
        flag="--other-pins",
        where=_EVERYWHERE,
        nested=False,
    )
    fixed_slots: bool = declare(
        SWITCH,
        False,
        "every worker keeps to its own slot: a running task's OpenBLAS pool does not borrow "
        "the cores of the pool's idle workers (lent by default, given back as soon as a task "
        "or another job wants them)",
        flag="--fixed-slots",
        where=("joblib",),
        nested=False,
    )
    fail: str = declare(
        choice(FAIL_POLICIES),
        "closed",
        "a Dask worker that cannot be pinned at all (no CPU affinity here, a slot larger "
        "than the host): 'closed' (the default) closes it; 'open' warns and runs it unpinned",
        flag="--fail",
        where=_DASK,
        aliases=(Alias("--pin-fail", "preload"),),
    )

    def __post_init__(self) -> None:
        for option in declared(type(self)):
            object.__setattr__(self, option.name, option.validate(getattr(self, option.name)))

    @classmethod
    def declared(cls, where: str | None = None) -> tuple[Option, ...]:
        """The declared options (those the front door ``where`` takes), in field order."""
        options = declared(cls)
        return options if where is None else tuple(o for o in options if where in o.where)

    @classmethod
    def option(cls, name: str) -> Option:
        """The declaration of the option ``name``."""
        (option,) = (o for o in cls.declared() if o.name == name)
        return option

    @classmethod
    def names(cls, where: str | None = None) -> tuple[str, ...]:
        """The option names, as keyword arguments spell them (those ``where`` takes)."""
        return tuple(option.name for option in cls.declared(where))

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, object], where: str) -> PinOptions:
        """Build from keyword arguments; unknown names raise ``TypeError`` (see
        :func:`reject_unknown`)."""
        reject_unknown(keywords, cls.names(), where)
        return cls(**keywords)

    @classmethod
    def take(cls, keywords: dict, where: str) -> dict:
        """Remove the options the front door ``where`` takes from ``keywords``; return them."""
        return {name: keywords.pop(name) for name in cls.names(where) if name in keywords}

    def keywords(self, where: str, *, nested: bool = False) -> dict:
        """These options as the front door ``where`` takes them (``nested``: only those a
        nested pool keeps)."""
        return {
            option.name: getattr(self, option.name)
            for option in self.declared(where)
            if option.nested or not nested
        }

    def within_job(self, job: PinOptions, given: Iterable[str]) -> PinOptions:
        """A caller's options (who gave the keywords ``given``) in a runner job whose options
        are ``job``: the job's value where the caller gave none, or both where the option
        joins them (``reserve``)."""
        given, changes = set(given), {}
        for option in self.declared("joblib"):
            mine, theirs = getattr(self, option.name), getattr(job, option.name)
            if option.joined is not None:
                changes[option.name] = option.joined(mine, theirs)
            elif option.name not in given or mine is None:
                changes[option.name] = theirs
        return self.updated(**changes)

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


def check_option(option: str, value: object, name: str | None = None) -> object:
    """Validate ``value`` for the :class:`PinOptions` field ``option``; return it normalised
    (``"auto"`` becomes None, a CPU list a set, a number of seconds a float). ``name`` is
    how messages spell the option (default: the keyword). Raises :class:`OptionsError`."""
    return PinOptions.option(option).validate(value, name)


def spelled(name: str, value: object = None, *, command_line: bool = False) -> str:
    """How a user writes the :class:`PinOptions` option ``name`` (see :meth:`Option.spelled`)."""
    return PinOptions.option(name).spelled(value, command_line=command_line)


#: joblib's own keywords, checked here with the others.
IDLE_WORKER_TIMEOUT = Option(
    "idle_worker_timeout",
    SECONDS,
    None,
    "seconds an idle loky worker lives",
    where=frozenset({"joblib"}),
    none_means="loky's default, 300 s",
)
INNER_MAX_NUM_THREADS = Option(
    "inner_max_num_threads",
    COUNT,
    None,
    "threads of each worker's thread pools",
    where=frozenset({"joblib"}),
    none_means="the worker's slot size",
)
