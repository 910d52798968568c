"""Run a script or a module exactly as ``python script.py`` / ``python -m module`` would.

The target runs in a fresh module installed as ``sys.modules["__main__"]`` for good (not a
temporary one, as ``runpy.run_path`` uses): functions defined in it pickle as
``__main__.name`` for spawned workers, and atexit handlers still find it. ``sys.argv``,
``sys.path[0]``, ``__file__``, ``__spec__`` and ``__loader__`` get the values CPython gives
them; modules, packages, directories and zip files go through ``runpy._run_module_as_main``,
the function CPython's own ``-m`` and directory handling call. An uncaught exception is
printed through ``sys.excepthook`` without pinbackend's frames, then re-raised so that the
interpreter exits as it would (status 1, or killed by SIGINT after KeyboardInterrupt).
"""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import io
import marshal
import os
import runpy
import sys
import types
import zipfile
from dataclasses import dataclass

__all__ = ["Target", "TargetError", "check_target", "run_target"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class TargetError(Exception):
    """The script cannot be opened or the module is not found: ``status`` is python's."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """What to run: a script path (or directory, zip) or a module name, and its arguments."""

    name: str
    args: tuple[str, ...] = ()
    module: bool = False

    def describe(self) -> str:
        """The target as typed after ``python``."""
        return f"-m {self.name}" if self.module else self.name


def _runs_as_package(path: str) -> bool:
    """Directories and zip files run their ``__main__`` module, as in CPython."""
    return os.path.isdir(path) or (os.path.isfile(path) and zipfile.is_zipfile(path))


def check_target(target: Target) -> None:
    """Raise :class:`TargetError` with python's own message if ``target`` cannot run."""
    if target.module:
        try:
            found = importlib.util.find_spec(target.name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise TargetError(f"{sys.executable}: No module named {target.name}", 1)
        return
    path = os.path.abspath(target.name)
    if _runs_as_package(path):
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise TargetError(
            f"{sys.executable}: can't open file {path!r}: [Errno {error.errno}] {error.strerror}",
            2,
        ) from None


def _script_dir(path: str) -> str:
    """CPython's ``sys.path[0]`` for a script: its directory, after following symlinks."""
    for _ in range(40):  # as the kernel, give up on long symlink chains
        if not os.path.islink(path):
            break
        link = os.readlink(path)
        path = link if os.path.isabs(link) else os.path.join(os.path.dirname(path), link)
    return os.path.dirname(os.path.abspath(path))


def _compile_script(path: str) -> types.CodeType:
    with io.open_code(path) as stream:
        data = stream.read()
    if data[:4] == importlib.util.MAGIC_NUMBER:
        return marshal.loads(data[16:])  # a .pyc file, as CPython accepts
    return compile(data, path, "exec", dont_inherit=True)


def _fresh_main() -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main


def _execute(target: Target) -> None:
    safe_path = getattr(sys.flags, "safe_path", False)  # python -P / -I (3.11+)
    if target.module:
        sys.argv = ["-m", *target.args]  # runpy puts the module's path in argv[0]
        if not safe_path:
            sys.path[0] = os.getcwd()
        _fresh_main()
        runpy._run_module_as_main(target.name, alter_argv=True)
        return
    sys.argv = [target.name, *target.args]
    path = os.path.abspath(target.name)
    if _runs_as_package(path):
        sys.path[0] = path
        _fresh_main()
        runpy._run_module_as_main("__main__", alter_argv=False)
        return
    if not safe_path:
        sys.path[0] = _script_dir(target.name)
    code = _compile_script(path)
    main = _fresh_main()
    main.__dict__.update(
        __file__=path,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __spec__=None,
        __package__=None,
    )
    exec(code, main.__dict__)


def _without_our_frames(traceback):
    while traceback is not None and traceback.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        traceback = traceback.tb_next
    return traceback


def _already_reported(*exc_info) -> None:
    """``sys.excepthook`` once the runner has printed the target's uncaught exception."""


def run_target(target: Target) -> None:
    """Run ``target`` in this process as python would; exceptions propagate like python's.

    ``SystemExit`` passes through untouched. Any other uncaught exception is shown by
    ``sys.excepthook`` (the target's own hook if it set one) without the runner's frames.
    """
    try:
        _execute(target)
    except SystemExit:
        raise
    except BaseException as error:
        # The default hook prints the exception's own __traceback__, not the one passed.
        error = error.with_traceback(_without_our_frames(error.__traceback__))
        sys.excepthook(type(error), error, error.__traceback__)
        # The interpreter reports it again on the way out; it has been shown already.
        sys.excepthook = _already_reported
        raise
