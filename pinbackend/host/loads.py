"""Know that an import loaded shared libraries, without asking the dynamic loader.

Thread caps reach only libraries already loaded, so a pinned thread must cap again after an
import brought in a BLAS or OpenMP runtime. Asking the loader which libraries it has
(``dl_iterate_phdr``) runs a callback while the loader's lock is held; a ctypes callback
needs the GIL, and a thread that imports an extension module holds the GIL inside
``dlopen``, which needs that lock: a lock-order deadlock (see docs/how-it-works.md, "Lock
order"). Instead, extension-module creation (where Python's imports ``dlopen``) is wrapped
once, and bumps a counter *after* the loader has returned:

- :func:`generation` is a plain integer read (tens of nanoseconds), cheap enough to compare
  before every task of a pinned thread;
- listeners (:func:`add_listener`) run in the importing thread, after the load, holding no
  lock of the loader's.

What the counter cannot see: libraries loaded by ``ctypes`` or by native code on its own
(``dlopen`` from C). Such threads are capped again only at their next thread start.
"""

from __future__ import annotations

import importlib.machinery
from collections.abc import Callable

from .locks import PinLock

__all__ = [
    "add_listener",
    "generation",
    "remove_listener",
    "stop_watching",
    "watch_extension_loads",
    "watching",
]

_LOADER = importlib.machinery.ExtensionFileLoader
#: Guards the hook's installation and the listener list; never held while a listener runs.
_LOCK = PinLock("extension-load watch")
_listeners: list[tuple[int, Callable[[], None]]] = []
_original_create_module = None
_generation = 0


def generation() -> int:
    """How many extension modules this process created since the watch was installed."""
    return _generation


def watching() -> bool:
    """Whether extension-module loads are being counted (see :func:`watch_extension_loads`)."""
    return _original_create_module is not None


def watch_extension_loads() -> None:
    """Start counting extension-module loads (idempotent; stays for the process's life).

    Called by the first pinned thread pool or the runner's main-process cap, never at
    import: a process that never asks pays nothing.
    """
    global _original_create_module
    if _original_create_module is not None:
        return
    with _LOCK:
        if _original_create_module is not None:
            return
        original = _LOADER.create_module

        def create_module(self, spec):
            module = original(self, spec)
            _loaded()
            return module

        create_module.__doc__ = original.__doc__
        create_module.__wrapped__ = original
        _LOADER.create_module = create_module
        _original_create_module = original


def stop_watching() -> None:
    """Put the loader's own ``create_module`` back (tests)."""
    global _original_create_module
    with _LOCK:
        if _original_create_module is not None:
            _LOADER.create_module = _original_create_module
            _original_create_module = None


def add_listener(listener: Callable[[], None], *, first: bool = False) -> None:
    """Call ``listener()`` in the importing thread after each extension-module load.

    ``first`` runs it before the others: the runner's main-process cap sets what the pinned
    pools' process-wide cap then lowers (and later restores).
    """
    with _LOCK:
        if any(existing == listener for _, existing in _listeners):
            return
        _listeners.append((0 if first else 1, listener))
        _listeners.sort(key=lambda entry: entry[0])


def remove_listener(listener: Callable[[], None]) -> None:
    """Stop calling ``listener`` (a no-op if it was not added)."""
    with _LOCK:
        _listeners[:] = [entry for entry in _listeners if entry[1] != listener]


def _loaded() -> None:
    global _generation
    with _LOCK:
        _generation += 1
        listeners = [listener for _, listener in _listeners]
    for listener in listeners:
        listener()
