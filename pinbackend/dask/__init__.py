"""Dask distributed integration: each worker process gets a disjoint slot of its host's cores.

Three ways to enable it (see the docs page "Dask"):

* ``client.register_plugin(PinPlugin())`` from a client: one registration installs the
  nanny half (caps in each worker's spawn environment) and the worker half (claim, pin,
  cap);
* ``dask worker SCHEDULER --preload-nanny pinbackend --preload pinbackend [--pin-...]``
  on each host;
* the ``distributed.nanny.preload`` configuration, set to ``["pinbackend"]`` (it adds the
  worker preload itself).

Workers a host has no slot for are handled by ``oversubscribe`` (``clamp`` closes them
with one warning per host, ``share`` shares slots, ``error`` refuses).

:func:`placement` and :func:`format_placement` show, from the client, where every worker
runs and how its thread pools are capped.
"""

from __future__ import annotations

try:
    import distributed  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pinbackend.dask needs dask's distributed package; install it with "
        "pip install 'pinbackend[dask]'"
    ) from error

from ._worker import PinRefused, current_pin
from .options import PinOptions
from .placement import WorkerPlacement, format_placement, placement
from .plugins import PinNannyPlugin, PinPlugin, PinWorkerPlugin

__all__ = [
    "PinNannyPlugin",
    "PinOptions",
    "PinPlugin",
    "PinRefused",
    "PinWorkerPlugin",
    "WorkerPlacement",
    "current_pin",
    "format_placement",
    "placement",
]
