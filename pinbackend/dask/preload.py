"""``dask worker --preload pinbackend [--pin-... options]``: the preload entry points.

The ``dask worker`` command imports the preload module in its own process only to parse
these options, so importing this module does nothing but define them. The same
``dask_setup`` serves ``--preload`` (a Worker: claim, pin, cap) and ``--preload-nanny`` (a
Nanny: the spawn environment). ``pinbackend/__init__.py`` exposes both functions lazily, so
that ``import pinbackend`` stays free of distributed and click.
"""

from __future__ import annotations

import click

from ..core.cpuset import CpuListError, parse_cpu_list
from .options import DEFAULT_CLAIM_TIMEOUT, FAIL_POLICIES, PinOptions

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
    "--pin-fail",
    type=click.Choice(FAIL_POLICIES),
    default="closed",
    show_default=True,
    help="closed: a worker that cannot be pinned refuses to start; open: it warns and "
    "runs unpinned.",
)
@click.option(
    "--pin-claim-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_CLAIM_TIMEOUT,
    show_default=True,
    help="Seconds a starting worker waits for a free slot.",
)
def dask_setup(server, pin_cores_per_worker, pin_reserve, pin_fail, pin_claim_timeout):
    """Pin a starting worker (``--preload``) or set a nanny's spawn environment
    (``--preload-nanny``)."""
    options = PinOptions(
        pin_cores_per_worker,
        reserve=pin_reserve,
        fail=pin_fail,
        claim_timeout=pin_claim_timeout,
    )
    from distributed import Nanny, Worker

    if isinstance(server, Worker):
        return _setup_worker(server, options)
    if isinstance(server, Nanny):
        from ._nanny import configure_nanny

        configure_nanny(server, options)
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
        fail=options.fail,
        claim_timeout=options.claim_timeout,
    )
    pending = getattr(worker, "_pending_plugins", None)
    if isinstance(pending, tuple):
        # Preload failures are only logged by distributed; plugins pending at start are
        # set up right after the preloads with errors raised, so fail=closed really stops
        # the worker from starting (and the nanny reports why).
        worker._pending_plugins = (*pending, plugin)
    else:  # a distributed without pending plugins: set up now, close the worker on refusal
        from ._worker import PinRefused

        try:
            await worker.plugin_add(plugin, catch_errors=False)
        except PinRefused:
            worker.loop.add_callback(worker.close, reason="pinbackend-pinning-refused")


def dask_teardown(server) -> None:
    """Release the preload's slot (the plugin's own teardown normally did already)."""
    from distributed import Worker

    if isinstance(server, Worker):
        from ._worker import unpin_worker
        from .plugins import _PreloadPinPlugin

        unpin_worker(server, source=_PreloadPinPlugin.name)
