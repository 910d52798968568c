"""``dask worker --preload-nanny pinbackend --preload pinbackend [--reserve ...]``: the preloads.

The ``dask worker`` command imports the preload module in its own process only to parse
these options, so importing this module does nothing but define them. The same
``dask_setup`` serves ``--preload`` (a Worker: claim, pin, cap) and ``--preload-nanny`` (a
Nanny: the spawn environment). ``dask worker`` hands the options after ``--preload
pinbackend`` to the worker preload only; the nanny preload reads them from there (its own,
from ``distributed.nanny.preload-argv``, win when given), so they are written once. A
nanny preload without the worker preload adds it: ``--preload-nanny pinbackend`` alone
sets up both halves. ``pinbackend/__init__.py`` exposes both functions lazily, so that
``import pinbackend`` stays free of distributed and click.

The flags are derived from the options' declarations
(:class:`~pinbackend.host.options.PinOptions`), spelled as every front door spells them
(``--cores-per-worker``, ``--reserve``, ``--oversubscribe``, ``--fail``,
``--claim-timeout``; ``dask worker`` has none of these itself); the old ``--pin-...``
spellings still work, hidden.
"""

from __future__ import annotations

import click

from ..host.options import Alias, Option, OptionsError, PinOptions

__all__ = ["dask_setup", "dask_teardown"]


def _checked(option: Option):
    """A click callback that validates a flag of ``option`` with the options' own check
    (:meth:`~pinbackend.host.options.Option.from_text`), in their words, with the flag as
    typed: the command line refuses, with exit status 2, exactly what the worker would
    refuse, so no refused option reaches a worker (which distributed would start unpinned
    after logging the failed preload). None (a hidden old spelling not given) stays None."""

    def callback(ctx, param, value):
        if value is None:
            return None
        name = param.opts[0]
        try:
            if isinstance(value, str):
                return option.from_text(value, name)
            return option.validate(value, name)
        except OptionsError as error:
            raise click.UsageError(error.spelled(name, str(value))) from None

    return callback


def _click_options(option: Option) -> list[click.Option]:
    """The click options of ``option``: its flag, then its old spellings, hidden."""
    default = None if option.default is None else option.kind.show(option.default)
    common = {"callback": _checked(option)}
    if option.kind.choices:
        common["type"] = click.Choice(option.kind.choices)
    params = [
        click.Option(
            [option.flag, option.name],
            default=default,
            show_default=default not in (None, ""),
            help=option.help[:1].upper() + option.help[1:] + ".",
            **common,
        )
    ]
    for alias in option.aliases_at("preload"):
        params.append(click.Option([alias.flag, _alias_name(alias)], hidden=True, **common))
    return params


def _alias_name(alias: Alias) -> str:
    return alias.flag.lstrip("-").replace("-", "_")


class _PreloadCommand(click.Command):
    """The preload's options as a click command that, in the worker, never fails to parse.

    ``dask worker`` checks the options on its command line first (``parse_args``: a usage
    error, exit status 2). Options from Dask's configuration
    (``distributed.worker.preload-argv``) reach only the worker, where distributed parses
    them with ``make_context``, logs a failure as "Failed to start preload" and starts the
    worker unpinned. Here ``make_context`` hands the error to :func:`dask_setup` instead
    (as ``invalid``), which refuses the worker: invalid options never run unpinned.

    It also parses a copy of ``args``: click consumes the list it parses, and that list is
    the preload's own ``argv``, which the nanny preload reads back (:func:`_own_argv`). An
    old spelling's value is handed on under the option's name.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, list(args), parent=parent, **extra)
        except click.UsageError as error:
            ctx = click.Context(self, info_name=info_name, parent=parent, **extra)
            ctx.params = {"invalid": error.format_message()}
            return ctx

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        for option in _DECLARED:
            for alias in option.aliases_at("preload"):
                value = ctx.params.pop(_alias_name(alias), None)
                if value is None:
                    continue
                if ctx.get_parameter_source(option.name) == click.core.ParameterSource.COMMANDLINE:
                    raise click.UsageError(
                        f"{alias.flag} is the old spelling of {option.flag}: give one of them"
                    )
                ctx.params[option.name] = value
        return rest


_DECLARED = PinOptions.declared("preload")


def _setup(server, invalid: str | None = None, **options):
    """Pin a starting worker (``--preload``) or set a nanny's spawn environment
    (``--preload-nanny``); refuse a worker whose options are ``invalid`` (see
    :class:`_PreloadCommand`)."""
    from distributed import Nanny, Worker

    if invalid is not None and isinstance(server, Worker | Nanny):
        return _refuse(server, invalid)
    options = PinOptions(**options)
    if isinstance(server, Worker):
        return _setup_worker(server, options)
    if isinstance(server, Nanny):
        _setup_nanny(server, options)
        return None
    raise TypeError(
        f"pinbackend is a worker or nanny preload (dask worker --preload pinbackend, "
        f"--preload-nanny pinbackend); it cannot set up a {type(server).__name__}"
    )


#: The preload as ``dask worker`` sees it: a click command with the options' flags.
dask_setup = _PreloadCommand(
    name="pinbackend",
    callback=_setup,
    params=[param for option in _DECLARED for param in _click_options(option)],
    help=_setup.__doc__,
)


def _refuse(server, invalid: str):
    """A worker with invalid options refuses to start and closes with its nanny; a nanny
    whose own options are invalid gives its worker the worker preload with those options
    where it has none, so that the worker refuses (and says why)."""
    from distributed import Worker

    from ._outcome import close_worker
    from ._worker import refuse_invalid_options
    from .plugins import _PreloadPinPlugin

    if isinstance(server, Worker):
        return close_worker(server, refuse_invalid_options(server, _PreloadPinPlugin.name, invalid))
    if _worker_preload_argv(server) is None:
        _add_worker_preload(server, _own_argv(server))
    return None


async def _setup_worker(worker, options: PinOptions) -> None:
    from .plugins import _PreloadPinPlugin

    plugin = _PreloadPinPlugin(**options.keywords("dask"))
    pending = getattr(worker, "_pending_plugins", None)
    if isinstance(pending, tuple):
        # Plugins pending at start are set up right after the preloads, before the worker
        # registers: it is pinned before the scheduler can send it a task. A worker that
        # does not fit registers and then closes (see close_worker).
        worker._pending_plugins = (*pending, plugin)
    else:  # a distributed without pending plugins: set up now
        await worker.plugin_add(plugin, catch_errors=False)


def _argv(options: PinOptions) -> list[str]:
    """``options`` as this preload's command line (for the worker preload a nanny adds):
    the flags of those that differ from their defaults."""
    argv = []
    for option in _DECLARED:
        value = getattr(options, option.name)
        if value != option.default:
            argv += [option.flag, option.text(value)]
    return argv


def _worker_preload_argv(nanny) -> list[str] | None:
    """The options the nanny gives its worker preload ``pinbackend``; None without one."""
    preload = list(nanny.preload or [])
    if "pinbackend" not in preload:
        return None
    argv = list(nanny.preload_argv or [])
    if argv and not isinstance(argv[0], str):
        return list(argv[preload.index("pinbackend")])
    return argv


def _own_argv(nanny) -> list[str]:
    for preload in getattr(nanny, "preloads", ()):
        if getattr(preload, "name", None) == "pinbackend":
            return list(preload.argv or [])
    return []


def _setup_nanny(nanny, options: PinOptions) -> None:
    """Caps in the spawn environment, planned with the worker preload's options unless the
    nanny preload has its own; add the worker preload where it is missing."""
    from ._nanny import configure_nanny

    theirs = _worker_preload_argv(nanny)
    if theirs is None:
        _add_worker_preload(nanny, _argv(options))
    elif theirs and not _own_argv(nanny):
        params = dask_setup.make_context("pinbackend", theirs).params
        if "invalid" not in params:  # else the worker preload refuses the worker itself
            options = PinOptions(**params)
    configure_nanny(nanny, options)


def _add_worker_preload(nanny, argv: list[str]) -> None:
    """Add the worker preload ``pinbackend`` with ``argv`` to the workers ``nanny`` starts."""
    preload, argvs = list(nanny.preload or []), list(nanny.preload_argv or [])
    if argvs and isinstance(argvs[0], str):
        argvs = [argvs] * len(preload)  # one flat list serves every preload
    elif not argvs:
        argvs = [[] for _ in preload]
    nanny.preload, nanny.preload_argv = [*preload, "pinbackend"], [*argvs, argv]


def dask_teardown(server) -> None:
    """Release the preload's slot (the plugin's own teardown normally did already)."""
    from distributed import Worker

    if isinstance(server, Worker):
        from ._worker import unpin_worker
        from .plugins import _PreloadPinPlugin

        unpin_worker(server, source=_PreloadPinPlugin.name)
