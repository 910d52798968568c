"""One way to change code pinbackend does not own, and to change it back.

pinbackend replaces a few attributes of other code: the ``__init__`` of the standard pools
under the runner, the extension-module loader's ``create_module`` (:mod:`.loads`), loky's
``_prepare_worker_env`` in a slot's own process, a Dask executor's ``submit``, the poll of a
loky worker's call queue, the end methods of a thread pool a user made. Each is a
:class:`Patch`: it keeps what it replaced, :meth:`~Patch.install` is idempotent and
:meth:`~Patch.undo` puts the original back, exactly as it was. :class:`Patches` installs
several as one (all or nothing) and undoes them last first.

Patches are not thread-safe: code that may install or undo one from two threads at once
serializes it (the load watch does so under its lock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["ItemPatch", "Patch", "Patches"]

#: Stands for "the target had no such attribute (or key) of its own".
_ABSENT: Any = object()


class Patch:
    """Replace ``target.name`` (a class, module or object's attribute) with ``wrap(original)``.

    ``wrap`` gets the attribute as ``getattr`` reads it when the patch is installed (a
    class's function, an object's bound method) and returns its replacement. A staticmethod
    stays one. An attribute the target did not hold itself (an object's method, which its
    class holds) is deleted again by :meth:`undo`, so that the class's own shows through.
    Also a context manager (installed inside the ``with`` block).
    """

    def __init__(self, target: Any, name: str, wrap: Callable[[Any], Any] | None) -> None:
        self.target = target
        self.name = name
        self._wrap = wrap
        self._value: Any = None  # what a setting sets (wrap None: see setting())
        self._saved: Any = _ABSENT  # the target's own entry before install
        self._installed = False
        #: What the attribute is while installed (None otherwise).
        self.replacement: Any = None

    @classmethod
    def setting(cls, target: Any, name: str, value: Any) -> Patch:
        """A patch that sets ``target.name`` to ``value`` (whatever was there before)."""
        patch = cls(target, name, None)  # the original is not read: it may not exist
        patch._value = value
        return patch

    @property
    def installed(self) -> bool:
        """Whether the replacement is in place."""
        return self._installed

    def install(self) -> Patch:
        """Put the replacement in place, keeping the original (idempotent); return self."""
        if self._installed:
            return self
        own = self._own()
        if self._wrap is None:
            replacement = self._value
        else:
            replacement = self._wrap(self._read())
            if isinstance(own, staticmethod) and not isinstance(replacement, staticmethod):
                replacement = staticmethod(replacement)
        self._write(replacement)
        self._saved, self.replacement, self._installed = own, replacement, True
        return self

    def undo(self) -> None:
        """Put the original back, or remove the attribute where the target had none of its
        own (idempotent)."""
        if not self._installed:
            return
        if self._saved is _ABSENT:
            self._delete()
        else:
            self._write(self._saved)
        self._saved, self.replacement, self._installed = _ABSENT, None, False

    def __enter__(self) -> Patch:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.undo()

    def __repr__(self) -> str:
        target = getattr(self.target, "__qualname__", None) or getattr(self.target, "__name__", "")
        target = target or f"{type(self.target).__qualname__} object"
        state = "installed" if self._installed else "not installed"
        return f"{type(self).__name__}({target}.{self.name}, {state})"

    # How the attribute is read and written; ItemPatch reads a mapping's key instead.
    def _own(self) -> Any:
        try:
            return vars(self.target).get(self.name, _ABSENT)
        except TypeError:  # no __dict__ (__slots__): what it has is its own
            return getattr(self.target, self.name, _ABSENT)

    def _read(self) -> Any:
        return getattr(self.target, self.name)

    def _write(self, value: Any) -> None:
        setattr(self.target, self.name, value)

    def _delete(self) -> None:
        delattr(self.target, self.name)


class ItemPatch(Patch):
    """Replace ``target[name]`` of a mapping (joblib's registry of backends), the same way."""

    target: MutableMapping

    def _own(self) -> Any:
        return self.target.get(self.name, _ABSENT)

    def _read(self) -> Any:
        return self.target[self.name]

    def _write(self, value: Any) -> None:
        self.target[self.name] = value

    def _delete(self) -> None:
        self.target.pop(self.name, None)

    def __repr__(self) -> str:
        state = "installed" if self._installed else "not installed"
        return f"ItemPatch([{self.name!r}], {state})"


class Patches:
    """Several patches installed as one, all or nothing, and undone last first.

    ``name`` says what they change (the runner lists its patches by it).
    """

    def __init__(self, name: str, patches: Iterable[Patch]) -> None:
        self.name = name
        self.patches = tuple(patches)

    @property
    def installed(self) -> bool:
        """Whether any of the patches is in place."""
        return any(patch.installed for patch in self.patches)

    def install(self) -> Patches:
        """Install every patch (idempotent); where one fails, undo those this call installed
        and raise. Return self."""
        done = []
        try:
            for patch in self.patches:
                if not patch.installed:
                    patch.install()
                    done.append(patch)
        except BaseException:
            for patch in reversed(done):
                patch.undo()
            raise
        return self

    def undo(self) -> None:
        """Undo every patch, last first (idempotent)."""
        for patch in reversed(self.patches):
            patch.undo()

    def __enter__(self) -> Patches:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"Patches({self.name!r}, {list(self.patches)!r})"
