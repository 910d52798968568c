"""``pinbackend bench``: measure pinbackend against the usual ways of running parallel work."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from ._common import fail, positive_int

HELP = "benchmark pinned workers against loky, multiprocessing, threading, Dask, by hand"

EPILOG = """\
Each measurement runs in a fresh interpreter (thread variables removed, a private lease
registry), strategies take turns round after round, and every run is kept. A run past its
timeout is killed with its workers and shown as "> N s". CPU time used by other processes on
the benchmark's CPUs is measured during every run; runs above --noise-threshold are marked
with * and make the verdicts weak: run on a quiet machine.

examples:
  python -m pinbackend bench --quick                 # 1-1.5 minutes (the CI smoke test)
  python -m pinbackend bench --check                 # full run, then pass/fail per target
  python -m pinbackend bench -w blas,nested -r 9     # two workloads, 9 rounds
  python -m pinbackend bench --from-json bench-results/bench-full-....json --check
"""


def add_parser(subparsers) -> None:
    """Register the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help=HELP,
        description=HELP + ".",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_what_to_measure(parser)
    _add_limits(parser)
    _add_outputs(parser)
    parser.set_defaults(handler=run)


def _add_what_to_measure(parser: argparse.ArgumentParser) -> None:
    """Mode, rounds, workers, workloads and strategies."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="small sizes, 1 round, fewer strategies: 1-1.5 minutes on 2 cores",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="every workload and strategy at full size, 5 rounds (the default)",
    )
    parser.set_defaults(mode="full")
    parser.add_argument(
        "-r", "--repeats", type=positive_int, metavar="N", help="rounds (default: 1 quick, 5 full)"
    )
    parser.add_argument(
        "-n",
        "--n-jobs",
        type=positive_int,
        metavar="N",
        help="workers for every strategy (default: the physical cores allowed here)",
    )
    parser.add_argument(
        "-w",
        "--workloads",
        type=_names,
        metavar="LIST",
        help="comma-separated workloads to run (default: all of the mode; see --list)",
    )
    parser.add_argument(
        "-s",
        "--strategies",
        type=_names,
        metavar="LIST",
        help="comma-separated strategies (sequential and pinned are always kept as references)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (here and in every measurement): it may register workloads "
        "and strategies",
    )


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """Time limits and how noise is judged."""
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="limit on each timed part (default: per workload, 20-90 s)",
    )
    parser.add_argument(
        "--setup-timeout",
        type=_seconds,
        default=120.0,
        metavar="SECONDS",
        help="limit on each measurement's start and warm-up (default: 120)",
    )
    parser.add_argument(
        "--noise-threshold",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="mark runs where others used more than this share of our CPUs (default: 0.05)",
    )
    parser.add_argument(
        "--retry-noisy",
        type=int,
        default=0,
        metavar="N",
        help="measure a run again, up to N times, when others disturbed it (default: 0); "
        "every attempt is kept in the JSON",
    )


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    """Where results go, and what is reported."""
    parser.add_argument(
        "-o",
        "--output",
        default="bench-results",
        metavar="DIR",
        help="folder for the JSON and PNG files (default: bench-results)",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    parser.add_argument(
        "--json", action="store_true", help="print the result document on stdout, no table"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the benchmark's targets; exit status 1 if one fails",
    )
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="do not measure: report (table, --check, chart) on a result file written before",
    )
    parser.add_argument(
        "--list", action="store_true", help="list workloads and strategies, then exit"
    )


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names; got {text!r}")
    return names


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds; got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run (or reload) the benchmark, print the table, write the files, check targets."""
    from ..bench.chart import write_chart
    from ..bench.report import finite, format_table, summarize, write_json
    from ..bench.suite import BenchConfig, load_plugins, run_benchmark
    from ..bench.targets import check_targets, format_targets

    try:
        load_plugins(args.plugin)
    except ValueError as error:
        fail(str(error))
    if args.list:
        _print_list()
        return 0
    json_path = None
    if args.from_json:
        doc = _load(args.from_json)
    else:
        try:
            config = BenchConfig(
                mode=args.mode,
                repeats=args.repeats,
                n_jobs=args.n_jobs,
                workloads=args.workloads,
                strategies=args.strategies,
                timeout=args.timeout,
                setup_timeout=args.setup_timeout,
                noise_threshold=args.noise_threshold,
                retry_noisy=args.retry_noisy,
                plugins=tuple(args.plugin),
            )
            _check_names(config)
        except (ValueError, KeyError) as error:
            fail(error.args[0] if isinstance(error, KeyError) else str(error))
        doc = run_benchmark(
            config,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            argv=["python", "-m", "pinbackend", "bench", *sys.argv[2:]]
            if sys.argv[1:2] == ["bench"]
            else None,
        )
    summary = summarize(doc)
    targets = check_targets(doc, summary)
    doc["summary"] = summary
    doc["targets"] = [t.to_dict() for t in targets]
    if not args.from_json:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(args.output) / f"bench-{doc['config']['mode']}-{stamp}"
        json_path = write_json(doc, base.with_suffix(".json"))
        chart_path = base.with_suffix(".png")
    else:
        chart_path = Path(args.from_json).with_suffix(".png")
    if args.json:
        json.dump(finite(doc), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(doc, summary))
        if args.check:
            print()
            print(format_targets(targets))
    if json_path is not None:
        print(f"pinbackend: wrote {json_path}", file=sys.stderr)
    if not args.no_chart:
        problem = write_chart(doc, summary, chart_path)
        if problem:
            print(f"pinbackend: {problem}", file=sys.stderr)
        else:
            print(f"pinbackend: wrote {chart_path}", file=sys.stderr)
    if args.check and any(t.status == "fail" for t in targets):
        return 1
    return 0


def _check_names(config) -> None:
    from ..bench.strategies import get_strategy
    from ..bench.workloads import get_workload

    for name in config.workloads or ():
        get_workload(name)
    for name in config.strategies or ():
        get_strategy(name)


def _load(path: str) -> dict:
    try:
        with open(path) as file:
            doc = json.load(file)
    except (OSError, ValueError) as error:
        fail(f"cannot read benchmark results from {path}: {error}")
    if not str(doc.get("format", "")).startswith("pinbackend-bench/"):
        fail(f"{path} is not a pinbackend bench result file (no 'format' key)")
    doc.pop("summary", None)
    doc.pop("targets", None)
    return doc


def _print_list() -> None:
    from ..bench.strategies import STRATEGIES
    from ..bench.workloads import WORKLOADS

    print("workloads (quick mode runs those marked q):")
    for name, workload in WORKLOADS.items():
        quick = "q" if workload.in_quick else " "
        print(f"  {quick} {name:<10} {workload.number:>3}. {workload.title}")
        print(f"      strategies: {', '.join(workload.strategies)}")
    print("strategies:")
    for name, strategy in STRATEGIES.items():
        missing = strategy.unavailable()
        note = f"  [unavailable: {missing}]" if missing else ""
        print(f"  {name:<16} {strategy.summary}{note}")
