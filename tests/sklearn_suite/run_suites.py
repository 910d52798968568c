"""Run scikit-learn's own test modules under loky and under "pinned", and compare them.

``tox -e sklearn`` runs this script (the project's pytest run does not collect it: its name
does not match ``test_*.py``). Each mode runs in its own pytest process, from a temporary
working folder, with ``-c pytest.ini`` of this folder (scikit-learn's conftest comes with the
package; the project's strict settings do not apply) and the plugin ``sklearn_pinned``:

- ``loky``: joblib's own default, the baseline;
- ``default``: "pinned" made joblib's default backend;
- ``config``: one ``parallel_config(backend="pinned")`` for the whole session.

The script fails (exit status 1) when a pinned mode fails or errors a test that does not
fail under loky, passes a strict xfail, collects other tests than loky, or never ran a
``Parallel`` call in pinned workers (then the mode was not exercised). Tests that fail under
loky too are listed, not counted against pinned. Every run gets a private, empty lease
registry (``PINBACKEND_RUNTIME_DIR``), so that leases of other jobs on the host cannot make
pinned calls wait or clamp.

    python tests/sklearn_suite/run_suites.py [--modes loky,default,config] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SUITE = Path(__file__).resolve().parent
PATH = "PYTHONPATH"

#: (label, pytest arguments): the test modules scikit-learn ships, run as its CI runs them.
RUNS = (
    (
        "modules",
        [
            "sklearn.utils.tests.test_parallel",
            "sklearn.tests.test_multiclass",
            "sklearn.model_selection.tests.test_search",
            "sklearn.model_selection.tests.test_validation",
            "sklearn.inspection.tests.test_permutation_importance",
        ],
    ),
    # -k applies to every module of a run: the forest tests get a run of their own.
    ("forest", ["sklearn.ensemble.tests.test_forest", "-k", "n_jobs or parallel"]),
)
MODES = ("loky", "default", "config")
PINNED_MODES = ("default", "config")
FAILING = ("failed", "error", "xpassed")
COLUMNS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
#: Seconds one pytest run may take (each test has pytest-timeout's limit from pytest.ini).
RUN_TIMEOUT = 1800
#: pytest exit statuses of a completed run: all passed, some tests failed.
COMPLETED = (0, 1)


def run_mode(mode: str, out: Path) -> dict:
    """Run every module in ``mode``; return its merged outcomes, seconds and Parallel calls."""
    site = Path(importlib.util.find_spec("sklearn").origin).parent.parent
    merged: dict = {"tests": {}, "seconds": {}, "parallel_calls": Counter(), "problems": []}
    for label, args in RUNS:
        result_file = out / f"{mode}-{label}.json"
        log_file = out / f"{mode}-{label}.log"
        with tempfile.TemporaryDirectory(prefix=f"sklearn-{mode}-") as cwd:
            registry = Path(cwd) / "leases"
            registry.mkdir(mode=0o700)
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(SUITE), os.environ.get(PATH)])),
                "PINBACKEND_RUNTIME_DIR": str(registry),
            }
            command = [
                sys.executable,
                "-m",
                "pytest",
                "-c",
                str(SUITE / "pytest.ini"),
                "--rootdir",
                str(site),
                "--pinned-mode",
                mode,
                "--outcomes",
                str(result_file),
                "-q",
                "-rfE",
                "--pyargs",
                *args,
            ]
            started = time.monotonic()
            with log_file.open("w") as log:
                try:
                    run = subprocess.run(
                        command, cwd=cwd, env=env, stdout=log, stderr=log, timeout=RUN_TIMEOUT
                    )
                    status = run.returncode
                except subprocess.TimeoutExpired:
                    status = f"none: killed after {RUN_TIMEOUT} s"
            seconds = time.monotonic() - started
        merged["seconds"][label] = round(seconds, 1)
        print(f"{mode:8} {label:8} {seconds:6.1f} s, pytest exit status {status}", flush=True)
        if status not in COMPLETED or not result_file.exists():
            merged["problems"].append(f"{mode} {label}: pytest exit status {status}")
            print(log_file.read_text()[-3000:])
            continue
        result = json.loads(result_file.read_text())
        merged["tests"].update(result["tests"])
        merged["parallel_calls"].update(result["parallel_calls"])
    return merged


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].removesuffix(".py").replace("/", ".")


def table(results: dict) -> str:
    """Outcome counts per module and mode."""
    lines = [f"{'module':52} {'mode':8} " + " ".join(f"{c:>7}" for c in COLUMNS)]
    modules = sorted({module_of(n) for r in results.values() for n in r["tests"]})
    for module in modules:
        for mode, result in results.items():
            tests = result["tests"]
            counts = Counter(v["outcome"] for n, v in tests.items() if module_of(n) == module)
            lines.append(f"{module:52} {mode:8} " + " ".join(f"{counts[c]:7}" for c in COLUMNS))
    return "\n".join(lines)


def compare(results: dict) -> list[str]:
    """What fails the run: pinned failures that loky does not have, and runs that did not
    exercise pinned (or did not complete)."""
    defects = [p for r in results.values() for p in r["problems"]]
    baseline = results.get("loky")
    for mode in PINNED_MODES:
        if mode not in results:
            continue
        pinned = results[mode]
        if not pinned["parallel_calls"]["pinned workers"]:
            defects.append(f"{mode}: no Parallel call ran in pinned workers (mode not exercised)")
        if baseline is None:
            # Without a baseline, every failure counts.
            failing = {n: v for n, v in pinned["tests"].items() if v["outcome"] in FAILING}
            defects += [f"{mode}: {n} {v['outcome']}" for n, v in failing.items()]
            continue
        if not baseline["problems"] and set(pinned["tests"]) != set(baseline["tests"]):
            only_loky = sorted(set(baseline["tests"]) - set(pinned["tests"]))
            only_pinned = sorted(set(pinned["tests"]) - set(baseline["tests"]))
            defects.append(
                f"{mode}: other tests than loky's: only under loky {only_loky[:5]}, "
                f"only under pinned {only_pinned[:5]}"
            )
        for nodeid, entry in sorted(pinned["tests"].items()):
            loky = baseline["tests"].get(nodeid, {}).get("outcome", "not run")
            if entry["outcome"] not in FAILING:
                continue
            if loky in ("failed", "error"):
                print(f"{mode}: {nodeid} {entry['outcome']}, also {loky} under loky (not counted)")
                continue
            defect = f"{mode}: {nodeid} {entry['outcome']} (loky: {loky})"
            defects.append(defect)
            print(f"\n===== {defect}\n{entry.get('longrepr', '')}")
    return defects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of {MODES}")
    parser.add_argument("--out", type=Path, default=None, help="folder for logs and outcome files")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; expected some of {', '.join(MODES)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="sklearn-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"logs and outcomes in {out}", flush=True)
    results = {mode: run_mode(mode, out) for mode in modes}
    print()
    print(table(results))
    for mode, result in results.items():
        calls = ", ".join(f"{k}: {v}" for k, v in sorted(result["parallel_calls"].items()))
        print(f"{mode}: {sum(result['seconds'].values()):.1f} s; Parallel calls: {calls}")
    defects = compare(results)
    if defects:
        print(f"\n{len(defects)} defect(s):", *defects, sep="\n  ")
        return 1
    print("\nno test fails under pinned that does not fail under loky")
    return 0


if __name__ == "__main__":
    sys.exit(main())
