"""How an option is declared once, for every front door to derive its interface from.

An :class:`Option` holds what a front door needs: the keyword, the flag and its old spellings
(:class:`Alias`), the :class:`Kind` of value (its check, how a command line's text becomes
a value, examples the tests try everywhere), the default, help text and the front doors
(:data:`FRONT_DOORS`) that take it. :func:`declare` makes one a dataclass field;
:func:`declared` reads a class's back. The values' checks themselves live in
:mod:`pinbackend.host.options`, with the options.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace

__all__ = [
    "FRONT_DOORS",
    "Alias",
    "Kind",
    "Option",
    "OptionsError",
    "declare",
    "declared",
    "redeclare",
    "reject_unknown",
]

#: The front doors an option can be given at: joblib's keywords, the Dask plugins' keywords,
#: the Dask preload's flags (``dask worker --preload pinbackend ...``), the runner's flags
#: (``python -m pinbackend ...``) and ``pinbackend run``'s.
FRONT_DOORS = ("joblib", "dask", "preload", "runner", "run")


class OptionsError(ValueError):
    """An option has a value that is not allowed (the message names value and remedy).

    ``reason`` says what is allowed, in the same words at every front door; the message puts
    the option's name, as that front door spells it, before it. Where ``echo`` is set the
    message ends with the value given (``; got ...``), which a command line shows as typed
    (:meth:`as_typed`); otherwise the reason quotes the value itself.
    """

    def __init__(self, message: str, *, reason: str | None = None, echo: bool = False):
        super().__init__(message)
        self.reason = message if reason is None else reason
        self.echo = echo

    @classmethod
    def refuse(cls, name: str, reason: str, value: object) -> OptionsError:
        """``NAME REASON; got VALUE``."""
        return cls(f"{name} {reason}; got {value!r}", reason=reason, echo=True)

    @classmethod
    def invalid(cls, name: str, reason: str) -> OptionsError:
        """``NAME: REASON``, where the reason quotes the value (a CPU list's parse error)."""
        return cls(f"{name}: {reason}", reason=reason)

    def as_typed(self, text: str) -> str:
        """The reason, ending with ``text`` (what a command line gave) where it echoes."""
        return f"{self.reason}; got {text!r}" if self.echo else self.reason

    def spelled(self, name: str, text: str) -> str:
        """The message for a command line that gave ``text`` to the flag ``name``."""
        return f"{name} {self.as_typed(text)}" if self.echo else f"{name}: {self.reason}"


def _as_is(value: object) -> object:
    return value


@dataclass(frozen=True)
class Kind:
    """What values an option takes, and how a command line spells them.

    ``check(name, value)`` validates a value and returns it normalised; ``parse`` turns a
    command line's text into the value a keyword would have (the check then refuses what it
    must); ``show`` writes a value back as a command line spells it (job records, the argv a
    Dask nanny hands its worker). ``good`` and ``bad`` are texts every front door must accept
    and refuse alike (the tests try them). ``choices``: the values, where they are listed;
    ``switch``: a flag without a value (True when given).
    """

    check: Callable[[str, object], object]
    metavar: str = ""
    parse: Callable[[str], object] = str
    show: Callable[[object], object] = _as_is
    good: tuple[str, ...] = ()
    bad: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    switch: bool = False


@dataclass(frozen=True)
class Alias:
    """An old spelling, kept hidden for one release: ``flag`` at the front door ``where``.
    ``value``: for a flag without a value of its own (``run --share``), what it stands for."""

    flag: str
    where: str
    value: object = None


@dataclass(frozen=True)
class Option:
    """One option, declared once; every front door derives its spelling from this.

    ``name``: the keyword. ``flag``: the one command-line spelling (``short``: a one-letter
    one beside it). ``where``: the front doors that take it. ``none_means``: what a keyword's
    None stands for, where the check does not take None itself (a command line leaves the
    flag out instead). ``nested``: whether a nested joblib pool, inside a pinned worker,
    keeps the caller's value. ``joined``: how a caller's value and a runner job's combine
    (None: the caller's, where given, else the job's).
    """

    name: str
    kind: Kind
    default: object
    help: str
    flag: str = ""
    where: frozenset[str] = frozenset()
    short: str = ""
    none_means: str | None = None
    aliases: tuple[Alias, ...] = ()
    nested: bool = True
    joined: Callable[[object, object], object] | None = None

    def validate(self, value: object, name: str | None = None) -> object:
        """``value`` checked and normalised; refusals spell the option ``name`` (default:
        the keyword). Raises :class:`OptionsError`."""
        name = name or self.name
        if value is None and self.none_means is not None:
            return None
        try:
            return self.kind.check(name, value)
        except OptionsError as error:
            if self.none_means is None or not error.echo:
                raise
            reason = f"{error.reason} or None ({self.none_means})"
            raise OptionsError.refuse(name, reason, value) from None

    def from_text(self, text: str, name: str | None = None) -> object:
        """The value a command line's ``text`` gives (a command line has no None: it leaves
        the flag out). Raises :class:`OptionsError`; :meth:`OptionsError.spelled` words it."""
        return self.kind.check(name or self.flag, self.kind.parse(text))

    def text(self, value: object) -> str:
        """``value`` as a command line writes it."""
        return str(self.kind.show(value))

    def aliases_at(self, where: str) -> tuple[Alias, ...]:
        """The old spellings the front door ``where`` still takes."""
        return tuple(alias for alias in self.aliases if alias.where == where)

    def spelled(self, value: object = None, *, command_line: bool = False) -> str:
        """How a user writes this option (with ``value``): ``oversubscribe='share'`` as a
        keyword, ``--oversubscribe share`` on a command line."""
        if command_line:
            return self.flag if value is None else f"{self.flag} {self.text(value)}"
        return self.name if value is None else f"{self.name}={value!r}"


def declare(kind: Kind, default: object, help: str, *, flag: str, where: Iterable[str], **more):
    """A dataclass field declared as an :class:`Option` (its name is the field's)."""
    option = Option("", kind, default, help, flag=flag, where=frozenset(where), **more)
    unknown = option.where - set(FRONT_DOORS)
    if unknown:
        raise ValueError(f"unknown front doors {sorted(unknown)}; known: {FRONT_DOORS}")
    return field(default=default, metadata={"option": option})


def redeclare(cls: type, name: str, default: object):
    """The field ``name`` of ``cls``, declared again with another ``default`` (a subclass's)."""
    (base,) = (f for f in fields(cls) if f.name == name)
    return field(default=default, metadata=base.metadata)


@functools.cache
def declared(cls: type) -> tuple[Option, ...]:
    """The options ``cls`` declares with :func:`declare`, in field order."""
    return tuple(
        replace(f.metadata["option"], name=f.name, default=f.default)
        for f in fields(cls)
        if "option" in f.metadata
    )


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
