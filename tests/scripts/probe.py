"""Report how this program was started: argv, sys.path, __main__; exit as asked.

Usage: python probe.py [ACTION] [ARGS...]. ACTION: report (default), pickle (also send a
__main__ function to a spawned worker), exit3, exitmsg, raise, interrupt, osexit.
"""

import json
import multiprocessing
import os
import sys


def square(x):
    """Defined in __main__: a spawned worker must find it by pickling reference."""
    return x * x


def describe():
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return {
        "argv": sys.argv,
        "path": sys.path,
        "name": __name__,
        "file": globals().get("__file__"),
        "spec": spec.name if spec is not None else None,
        "package": __package__,
        "loader": type(globals().get("__loader__")).__name__,
        "cached": globals().get("__cached__"),
        "main_is_this_module": main.__dict__ is globals(),
        "square_module": square.__module__,
        "cwd": os.getcwd(),
    }


def fail_deep(depth):
    if depth == 0:
        raise ValueError("boom from the script")
    fail_deep(depth - 1)


def main(action):
    if action == "pickle":
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            print(json.dumps({**describe(), "squares": pool.map(square, [1, 2, 3])}))
        return
    print(json.dumps(describe()), flush=True)
    if action == "exit3":
        sys.exit(3)
    if action == "exitmsg":
        sys.exit("leaving with a message")
    if action == "raise":
        fail_deep(2)
    if action == "interrupt":
        raise KeyboardInterrupt
    if action == "osexit":
        os._exit(5)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "report")
