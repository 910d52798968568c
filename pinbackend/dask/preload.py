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

from ..core.cpuset import CpuListError, format_cpu_list, parse_cpu_list
from .options import DEFAULT_CLAIM_TIMEOUT, FAIL_POLICIES, OVERSUBSCRIBE_POLICIES, PinOptions

__all__ = ["dask_setup", "dask_teardown"]


def _cores_per_worker(ctx, param, value: str) -> int | None:
    if value == "auto":
        return None
    try:
        cores = int(value)
    except ValueError:
        cores = 0
    if cores < 1:
        raise click.BadParameter(f"expected 'auto' or a positive number of cores; got {value!r}")
    return cores


def _cpu_list(ctx, param, value: str) -> frozenset[int]:
    try:
        return parse_cpu_list(value)
    except CpuListError as error:
        raise click.BadParameter(str(error)) from None


@click.command(name="pinbackend")
@click.option(
    "--pin-cores-per-worker",
    default="auto",
    show_default=True,
    callback=_cores_per_worker,
    help="Physical cores per worker; 'auto' gives each task thread one CPU.",
)
@click.option(
    "--pin-reserve",
    default="",
    callback=_cpu_list,
    help="CPUs no worker may use, as a list like '0' or '0-1,8'.",
)
@click.option(
    "--pin-oversubscribe",
    type=click.Choice(OVERSUBSCRIBE_POLICIES),
    default="clamp",
    show_default=True,
    help="Workers beyond the slots a host has: clamp closes them (one warning per host), "
    "share runs them on shared slots, error refuses them, wait waits for other jobs' cores.",
)
@click.option(
    "--pin-fail",
    type=click.Choice(FAIL_POLICIES),
    default="closed",
    show_default=True,
    help="A worker that cannot be pinned at all (no CPU affinity here, a slot larger than "
    "the host): closed closes it; open warns and runs it unpinned.",
)
@click.option(
    "--pin-claim-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_CLAIM_TIMEOUT,
    show_default=True,
    help="Seconds a starting worker waits for cores other jobs hold.",
)
def dask_setup(
    server, pin_cores_per_worker, pin_reserve, pin_oversubscribe, pin_fail, pin_claim_timeout
):
    """Pin a starting worker (``--preload``) or set a nanny's spawn environment
    (``--preload-nanny``)."""
    options = PinOptions(
        pin_cores_per_worker,
        reserve=pin_reserve,
        oversubscribe=pin_oversubscribe,
        fail=pin_fail,
        claim_timeout=pin_claim_timeout,
    )
    from distributed import Nanny, Worker

    if isinstance(server, Worker):
        return _setup_worker(server, options)
    if isinstance(server, Nanny):
        _setup_nanny(server, options)
        return None
    raise TypeError(
        f"pinbackend is a worker or nanny preload (dask worker --preload pinbackend, "
        f"--preload-nanny pinbackend); it cannot set up a {type(server).__name__}"
    )


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
        preload, argv = list(nanny.preload or []), list(nanny.preload_argv or [])
        if argv and isinstance(argv[0], str):
            argv = [argv] * len(preload)  # one flat list serves every preload
        elif not argv:
            argv = [[] for _ in preload]
        nanny.preload, nanny.preload_argv = [*preload, "pinbackend"], [*argv, _argv(options)]
    elif theirs and not _own_argv(nanny):
        try:
            params = dask_setup.make_context("pinbackend", theirs).params
        except click.ClickException:
            pass  # the worker preload reports its bad options itself
        else:
            options = PinOptions(
                params["pin_cores_per_worker"],
                reserve=params["pin_reserve"],
                oversubscribe=params["pin_oversubscribe"],
                fail=params["pin_fail"],
                claim_timeout=params["pin_claim_timeout"],
            )
    configure_nanny(nanny, options)


def dask_teardown(server) -> None:
    """Release the preload's slot (the plugin's own teardown normally did already)."""
    from distributed import Worker

    if isinstance(server, Worker):
        from ._worker import unpin_worker
        from .plugins import _PreloadPinPlugin

        unpin_worker(server, source=_PreloadPinPlugin.name)
