"""Know that an import loaded shared libraries, without asking the dynamic loader.

Thread caps reach only libraries already loaded, so a pinned thread must cap again after an
import brought in a BLAS or OpenMP runtime. Asking the loader which libraries it has
(``dl_iterate_phdr``) runs a callback while the loader's lock is held; a ctypes callback
needs the GIL, and a thread that imports an extension module holds the GIL inside
``dlopen``, which needs that lock: a lock-order deadlock (see docs/how-it-works.md, "Lock
order"). Instead, extension-module creation (where Python's imports ``dlopen``) is wrapped
once (a :class:`~pinbackend.host.patches.Patch`), and bumps a counter *after* the loader has
returned:

- :func:`generation` is a plain integer read (tens of nanoseconds), cheap enough to compare
  before every task of a pinned thread;
- listeners (:func:`add_listener`) run in the importing thread, after the load, holding no
  lock of the loader's.

The count, the listeners and the patch are this process's :class:`LoadWatch`, kept in
``STATE.load_watch`` (inherited by a forked child, with the patched loader itself).

What the counter cannot see: libraries loaded by ``ctypes`` or by native code on its own
(``dlopen`` from C). Such threads are capped again only at their next thread start.
"""

from __future__ import annotations

import importlib.machinery
from collections.abc import Callable

from .locks import PinLock
from .patches import Patch
from .state import STATE

__all__ = [
    "LoadWatch",
    "add_listener",
    "generation",
    "remove_listener",
    "stop_watching",
    "watch_extension_loads",
    "watching",
]

_LOADER = importlib.machinery.ExtensionFileLoader
#: Guards the watch's making, its patch and its listener list; never held while a listener
#: runs.
_LOCK = PinLock("extension-load watch")


class LoadWatch:
    """This process's count of extension-module loads, and who to call after each."""

    def __init__(self) -> None:
        #: Extension modules created since the watch was first installed.
        self.generation = 0
        self.listeners: list[tuple[int, Callable[[], None]]] = []
        #: Wraps the loader's ``create_module`` (installed by :func:`watch_extension_loads`).
        self.patch = Patch(_LOADER, "create_module", self._counting)

    def _counting(self, original: Callable) -> Callable:
        def create_module(loader, spec):
            module = original(loader, spec)
            self.loaded()
            return module

        create_module.__doc__ = original.__doc__
        create_module.__wrapped__ = original
        return create_module

    def loaded(self) -> None:
        """Count one load, then call the listeners (in the importing thread, unlocked)."""
        with _LOCK:
            self.generation += 1
            listeners = [listener for _, listener in self.listeners]
        for listener in listeners:
            listener()

    def stop(self) -> None:
        """Put the loader's own ``create_module`` back (idempotent)."""
        with _LOCK:
            self.patch.undo()


def _watch() -> LoadWatch:
    """This process's watch, made on first use (not installed by that)."""
    watch = STATE.load_watch
    if watch is None:
        with _LOCK:
            if STATE.load_watch is None:
                STATE.load_watch = LoadWatch()
            watch = STATE.load_watch
    return watch


def generation() -> int:
    """How many extension modules this process created since the watch was installed."""
    watch = STATE.load_watch
    return 0 if watch is None else watch.generation


def watching() -> bool:
    """Whether extension-module loads are being counted (see :func:`watch_extension_loads`)."""
    watch = STATE.load_watch
    return watch is not None and watch.patch.installed


def watch_extension_loads() -> None:
    """Start counting extension-module loads (idempotent; stays for the process's life).

    Called by the first pinned thread pool or the runner's main-process cap, never at
    import: a process that never asks pays nothing.
    """
    watch = _watch()
    if watch.patch.installed:
        return
    with _LOCK:
        watch.patch.install()


def stop_watching() -> None:
    """Put the loader's own ``create_module`` back (tests; :func:`reset_process_state
    <pinbackend.host.state.reset_process_state>` does it too)."""
    watch = STATE.load_watch
    if watch is not None:
        watch.stop()


def add_listener(listener: Callable[[], None], *, first: bool = False) -> None:
    """Call ``listener()`` in the importing thread after each extension-module load.

    ``first`` runs it before the others: the runner's main-process cap sets what the pinned
    pools' process-wide cap then lowers (and later restores).
    """
    watch = _watch()
    with _LOCK:
        if any(existing == listener for _, existing in watch.listeners):
            return
        watch.listeners.append((0 if first else 1, listener))
        watch.listeners.sort(key=lambda entry: entry[0])


def remove_listener(listener: Callable[[], None]) -> None:
    """Stop calling ``listener`` (a no-op if it was not added)."""
    watch = STATE.load_watch
    if watch is None:
        return
    with _LOCK:
        watch.listeners[:] = [entry for entry in watch.listeners if entry[1] != listener]
