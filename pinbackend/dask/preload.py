"""``dask worker --preload-nanny pinbackend --preload pinbackend [--pin-...]``: the preloads.

The ``dask worker`` command imports the preload module in its own process only to parse
these options, so importing this module does nothing but define them. The same
``dask_setup`` serves ``--preload`` (a Worker: claim, pin, cap) and ``--preload-nanny`` (a
Nanny: the spawn environment). ``dask worker`` hands the options after ``--preload
pinbackend`` to the worker preload only; the nanny preload reads them from there (its own,
from ``distributed.nanny.preload-argv``, win when given), so they are written once. A
nanny preload without the worker preload adds it: ``--preload-nanny pinbackend`` alone
sets up both halves. ``pinbackend/__init__.py`` exposes both functions lazily, so that
``import pinbackend`` stays free of distributed and click.
"""

from __future__ import annotations

import click

from ..core.cpuset import format_cpu_list
from ..host.options import OptionsError, check_option
from .options import DEFAULT_CLAIM_TIMEOUT, FAIL_POLICIES, OVERSUBSCRIBE_POLICIES, PinOptions

__all__ = ["dask_setup", "dask_teardown"]


def _checked(option: str, parse=str):
    """A click callback that validates ``--pin-...`` with :class:`PinOptions`' own validator
    for ``option`` (:func:`~pinbackend.host.options.check_option`), after ``parse`` turned the
    text into the value a keyword would have: the command line refuses, with exit status 2,
    exactly what the worker would refuse, so no refused option reaches a worker (which
    distributed would start unpinned after logging the failed preload)."""

    def callback(ctx, param, value):
        name = param.opts[0]
        try:
            return check_option(option, parse(value) if isinstance(value, str) else value, name)
        except OptionsError as error:
            raise click.UsageError(str(error)) from None

    return callback


def _number(text: str) -> int | float | str:
    """``"2"`` -> 2, ``"0.5"`` -> 0.5, ``"nan"`` -> nan; other text stays text (refused by
    the validator, which then names it as given)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class _PreloadCommand(click.Command):
    """The preload's options as a click command that, in the worker, never fails to parse.

    ``dask worker`` checks the options on its command line first (``parse_args``: a usage
    error, exit status 2). Options from Dask's configuration
    (``distributed.worker.preload-argv``) reach only the worker, where distributed parses
    them with ``make_context``, logs a failure as "Failed to start preload" and starts the
    worker unpinned. Here ``make_context`` hands the error to :func:`dask_setup` instead
    (as ``invalid``), which refuses the worker: invalid options never run unpinned.

    It also parses a copy of ``args``: click consumes the list it parses, and that list is
    the preload's own ``argv``, which the nanny preload reads back (:func:`_own_argv`).
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, list(args), parent=parent, **extra)
        except click.UsageError as error:
            ctx = click.Context(self, info_name=info_name, parent=parent, **extra)
            ctx.params = {"invalid": error.format_message()}
            return ctx


@click.command(name="pinbackend", cls=_PreloadCommand)
@click.option(
    "--pin-cores-per-worker",
    default="auto",
    show_default=True,
    callback=_checked("cores_per_worker", _number),
    help="Physical cores per worker; 'auto' gives each task thread one CPU.",
)
@click.option(
    "--pin-reserve",
    default="",
    callback=_checked("reserve"),
    help="CPUs no worker may use, as a list like '0' or '0-1,8'.",
)
@click.option(
    "--pin-oversubscribe",
    type=click.Choice(OVERSUBSCRIBE_POLICIES),
    default="clamp",
    callback=_checked("oversubscribe"),
    show_default=True,
    help="Workers beyond the slots a host has: clamp closes them (one warning per host), "
    "share runs them on shared slots, error refuses them, wait waits for other jobs' cores.",
)
@click.option(
    "--pin-fail",
    type=click.Choice(FAIL_POLICIES),
    default="closed",
    callback=_checked("fail"),
    show_default=True,
    help="A worker that cannot be pinned at all (no CPU affinity here, a slot larger than "
    "the host): closed closes it; open warns and runs it unpinned.",
)
@click.option(
    "--pin-claim-timeout",
    type=str,
    default=DEFAULT_CLAIM_TIMEOUT,
    callback=_checked("claim_timeout", _number),
    show_default=True,
    help="Seconds a starting worker waits for cores other jobs hold.",
)
def dask_setup(
    server,
    pin_cores_per_worker=None,
    pin_reserve=frozenset(),
    pin_oversubscribe=None,
    pin_fail="closed",
    pin_claim_timeout=DEFAULT_CLAIM_TIMEOUT,
    *,
    invalid: str | None = None,
):
    """Pin a starting worker (``--preload``) or set a nanny's spawn environment
    (``--preload-nanny``); refuse a worker whose options are ``invalid`` (see
    :class:`_PreloadCommand`)."""
    from distributed import Nanny, Worker

    if invalid is not None and isinstance(server, Worker | Nanny):
        return _refuse(server, invalid)
    options = PinOptions(
        pin_cores_per_worker,
        reserve=pin_reserve,
        oversubscribe=pin_oversubscribe,
        fail=pin_fail,
        claim_timeout=pin_claim_timeout,
    )
    if isinstance(server, Worker):
        return _setup_worker(server, options)
    if isinstance(server, Nanny):
        _setup_nanny(server, options)
        return None
    raise TypeError(
        f"pinbackend is a worker or nanny preload (dask worker --preload pinbackend, "
        f"--preload-nanny pinbackend); it cannot set up a {type(server).__name__}"
    )


def _refuse(server, invalid: str):
    """A worker with invalid options refuses to start and closes with its nanny; a nanny
    whose own options are invalid gives its worker the worker preload with those options
    where it has none, so that the worker refuses (and says why)."""
    from distributed import Worker

    from ._worker import close_worker, refuse_invalid_options
    from .plugins import _PreloadPinPlugin

    if isinstance(server, Worker):
        return close_worker(server, refuse_invalid_options(server, _PreloadPinPlugin.name, invalid))
    if _worker_preload_argv(server) is None:
        _add_worker_preload(server, _own_argv(server))
    return None


async def _setup_worker(worker, options: PinOptions) -> None:
    from .plugins import _PreloadPinPlugin

    plugin = _PreloadPinPlugin(
        options.cores_per_worker,
        reserve=options.reserve,
        oversubscribe=options.oversubscribe,
        fail=options.fail,
        claim_timeout=options.claim_timeout,
    )
    pending = getattr(worker, "_pending_plugins", None)
    if isinstance(pending, tuple):
        # Plugins pending at start are set up right after the preloads, before the worker
        # registers: it is pinned before the scheduler can send it a task. A worker that
        # does not fit registers and then closes (see close_worker).
        worker._pending_plugins = (*pending, plugin)
    else:  # a distributed without pending plugins: set up now
        await worker.plugin_add(plugin, catch_errors=False)


def _argv(options: PinOptions) -> list[str]:
    """``options`` as this preload's command line (for the worker preload a nanny adds)."""
    argv = []
    if options.cores_per_worker is not None:
        argv += ["--pin-cores-per-worker", str(options.cores_per_worker)]
    if options.reserve:
        argv += ["--pin-reserve", format_cpu_list(options.reserve)]
    if options.oversubscribe is not None:
        argv += ["--pin-oversubscribe", options.oversubscribe]
    argv += ["--pin-fail", options.fail]
    return [*argv, "--pin-claim-timeout", repr(options.claim_timeout)]


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
            options = PinOptions(
                params["pin_cores_per_worker"],
                reserve=params["pin_reserve"],
                oversubscribe=params["pin_oversubscribe"],
                fail=params["pin_fail"],
                claim_timeout=params["pin_claim_timeout"],
            )
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
