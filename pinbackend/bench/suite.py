"""Plan and run the whole benchmark: rounds of interleaved measurements, one process each.

Every round measures every (workload, strategy) cell once; within a round the strategies of
a workload take turns in an order rotated from round to round, so slow drifts of the
machine (another job starting, the CPU heating up) hit every strategy alike, and the
measurements of one round can be compared pair by pair.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .. import _platform
from ..host.caps import THREAD_ENV_VARS, thread_env
from ..host.machine import read_topology
from ..host.registry import REGISTRY_ENV
from ..host.slot import SCOPE_ENV, SLOT_ENV
from .cgroups import CgroupUnavailable, child_cgroup
from .measure import run_measurement
from .neighbours import Neighbour, Progress
from .strategies import STRATEGIES, get_strategy
from .workloads import MODES, WORKLOADS, get_workload

__all__ = ["FORMAT", "BenchConfig", "default_n_jobs", "plan_runs", "run_benchmark"]

#: Written into every result file; bump when the layout changes.
FORMAT = "pinbackend-bench/1"

#: CPU seconds others must use in a window before it can count as noisy (3 clock ticks).
_MIN_NOISE_SECONDS = 0.03

#: Repeats per cell when not given.
DEFAULT_REPEATS = {"quick": 1, "full": 5}


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``None`` means the default for the mode (see the CLI's ``--help``)."""

    mode: str = "full"
    repeats: int | None = None
    n_jobs: int | None = None
    workloads: tuple[str, ...] | None = None
    strategies: tuple[str, ...] | None = None
    timeout: float | None = None
    setup_timeout: float = 120.0
    noise_threshold: float = 0.05
    retry_noisy: int = 0
    plugins: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        for name in ("repeats", "n_jobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
        if not 0 <= self.noise_threshold <= 1:
            raise ValueError(
                f"noise_threshold is a share of the CPUs' capacity, between 0 and 1; "
                f"got {self.noise_threshold!r}"
            )
        if not isinstance(self.retry_noisy, int) or self.retry_noisy < 0:
            raise ValueError(f"retry_noisy must be an integer >= 0; got {self.retry_noisy!r}")
        for name in ("timeout", "setup_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds; got {value!r}")

    @property
    def n_repeats(self) -> int:
        """Rounds to run."""
        return self.repeats or DEFAULT_REPEATS[self.mode]


def default_n_jobs() -> int:
    """Physical cores this process may use: the workers every strategy runs by default."""
    topology = read_topology()
    return topology.count_cores(topology.allowed) or 1


def load_plugins(modules: Sequence[str]) -> None:
    """Import plugin modules, which register extra workloads or strategies."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(
                f"cannot import bench plugin {module!r}: {error}; give an importable module "
                f"name (on PYTHONPATH) that registers workloads or strategies"
            ) from None


def _selected(config: BenchConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(workload, strategies) pairs to measure, in order, after the filters."""
    names = config.workloads or tuple(
        name for name, w in WORKLOADS.items() if config.mode == "full" or w.in_quick
    )
    for name in config.strategies or ():
        get_strategy(name)  # a typo is an error, not an empty table
    chosen = []
    for name in names:
        workload = get_workload(name)
        strategies = workload.strategies_for(config.mode)
        if config.strategies is not None:
            # Comparisons need their references: keep sequential and the pinned strategy.
            keep = set(config.strategies) | {"sequential", workload.pinned, "none"}
            strategies = tuple(s for s in workload.strategies if s in keep)
        if strategies:
            chosen.append((name, strategies))
    return chosen


def plan_runs(config: BenchConfig) -> list[dict]:
    """Every measurement of the run, in the order it will be made."""
    runs = []
    selected = _selected(config)
    for round_index in range(config.n_repeats):
        for workload, strategies in selected:
            shift = round_index % len(strategies)
            for strategy in strategies[shift:] + strategies[:shift]:
                runs.append({"workload": workload, "strategy": strategy, "round": round_index})
    return runs


def _child_env(registry: str, threads: int | None = None) -> dict[str, str]:
    """A measurement's environment: the user's, minus anything that would cap or place it,
    plus the private lease registry and, if given, a thread cap."""
    drop = {*THREAD_ENV_VARS, "PYTHON_CPU_COUNT", SCOPE_ENV, SLOT_ENV}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env[REGISTRY_ENV] = registry
    if threads is not None:
        env.update(thread_env(threads))
    return env


def _status_line(run: dict, index: int, total: int) -> str:
    head = f"[{index}/{total}] {run['workload']} / {run['strategy']} (round {run['round'] + 1})"
    status = run["status"]
    if status == "ok":
        noisy = f", NOISY {run['noise']:.0%}" if run.get("noisy") else ""
        return f"{head}: {run['time']:.3f} s{noisy}"
    if status == "timeout":
        return f"{head}: > {run['timeout']:g} s (timeout)"
    return f"{head}: {status}: {run.get('reason', '')}"


def run_benchmark(
    config: BenchConfig,
    *,
    progress: Callable[[str], None] | None = None,
    argv: Sequence[str] | None = None,
) -> dict:
    """Run the benchmark; return the result document (every run, the machine, the config).

    ``progress`` receives one line per measurement. A run that others disturbed (noise
    above the threshold) is measured again, up to ``config.retry_noisy`` times; every
    attempt stays in the document, the earlier ones marked ``superseded``. Interrupting
    (Ctrl-C) stops after killing the current measurement and returns what was measured,
    marked ``interrupted``.
    """
    load_plugins(config.plugins)
    n_jobs = config.n_jobs or default_n_jobs()
    planned = plan_runs(config)
    started = time.time()
    doc = {
        "format": FORMAT,
        "command": " ".join(argv) if argv is not None else None,
        "started": _iso(started),
        "config": {**asdict(config), "n_jobs": n_jobs, "repeats": config.n_repeats},
        "machine": machine_info(n_jobs),
        "workloads": _describe_workloads(config, n_jobs),
        "strategies": {
            name: {"label": s.label, "summary": s.summary} for name, s in STRATEGIES.items()
        },
        "runs": [],
        "interrupted": False,
    }
    hung: set[tuple[str, str]] = set()
    registry = tempfile.mkdtemp(prefix="pinbackend-bench-leases-")
    try:
        for index, run in enumerate(planned, 1):
            for attempt in range(config.retry_noisy + 1):
                record = _measure_one(run, config, n_jobs, registry, hung)
                record["attempt"] = attempt
                final = attempt == config.retry_noisy or not record.get("noisy")
                if not final:
                    # Kept for the record, left out of every summary: measured again.
                    record["superseded"] = True
                doc["runs"].append(record)
                if progress is not None:
                    again = "" if final else " -> measuring again"
                    progress(_status_line(record, index, len(planned)) + again)
                if final:
                    break
    except KeyboardInterrupt:
        doc["interrupted"] = True
    finally:
        shutil.rmtree(registry, ignore_errors=True)
    finished = time.time()
    doc["finished"] = _iso(finished)
    doc["duration_s"] = round(finished - started, 1)
    doc["machine"]["load_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return doc


def _measure_one(run, config, n_jobs, registry, hung) -> dict:
    workload = get_workload(run["workload"])
    strategy = get_strategy(run["strategy"])
    timeout = config.timeout or workload.timeout[config.mode]
    record = {**run, "status": None, "time": None, "timeout": timeout}
    missing = strategy.unavailable()
    if missing:
        return {**record, "status": "unavailable", "reason": missing}
    if (workload.name, strategy.name) in hung:
        reason = workload.hangs[strategy.name]
        return {**record, "status": "skipped", "reason": f"timed out in an earlier round; {reason}"}
    spec = {
        "workload": workload.name,
        "strategy": strategy.name,
        "n_jobs": n_jobs,
        "params": dict(workload.params[config.mode]),
        "plugins": list(config.plugins),
        "cpus": sorted(_platform.allowed_cpus()),
    }
    env = _child_env(registry, strategy.process_threads)
    began = time.time()
    progress = None
    command = strategy.command(sys.executable)
    with contextlib.ExitStack() as stack:
        if workload.cgroup:
            # A fresh child cgroup per measurement: the same limit for every strategy, and
            # nothing a killed measurement left behind can slow the next one.
            try:
                group = stack.enter_context(child_cgroup(**workload.cgroup, tag="bench"))
            except CgroupUnavailable as error:
                limits = ", ".join(f"{k} {v:g}" for k, v in workload.cgroup.items())
                return {
                    **record,
                    "status": "unavailable",
                    "reason": f"needs a cgroup ({limits}): {error}",
                }
            command = group.prefix() + command
        if workload.neighbour:
            # Started first and from here, as a daemon that was on the machine before the
            # job (see pinbackend.bench.neighbours); it gets the last CPU.
            try:
                neighbour = stack.enter_context(
                    Neighbour(
                        workload.neighbour, max(_platform.allowed_cpus()), _child_env(registry)
                    )
                )
            except RuntimeError as error:
                return {**record, "status": "failed", "reason": f"neighbour: {error}"}
            spec["neighbour"] = neighbour.to_spec()
            if spec["neighbour"]["progress"]:
                # The daemon's progress seen from here too: a run killed at its timeout
                # reports nothing itself, but how the daemon fared meanwhile is worth knowing.
                progress = Progress(spec["neighbour"]["progress"])
        outcome = run_measurement(
            command,
            spec,
            env=env,
            timeout=timeout,
            setup_timeout=config.setup_timeout,
            on_ready=progress.mark if progress is not None else None,
        )
        if progress is not None and outcome["status"] == "timeout":
            progress.mark()
            daemon_rate = progress.rate()
            if daemon_rate is not None:
                outcome["extra"] = {"daemon_rate": daemon_rate}
    record.update(outcome)
    record["started_at"] = _iso(began)
    record["duration_s"] = round(time.time() - began, 2)
    if record["status"] == "timeout" and strategy.name in workload.hangs:
        hung.add((workload.name, strategy.name))
        record["reason"] = workload.hangs[strategy.name]
    window = record.get("window")
    if window and window.get("available"):
        record["noise"] = window["noise"]
        # /proc/stat counts in clock ticks (10 ms): in a window of a few ticks one stray
        # tick is "5 %", so a run is noisy only if others also used a few ticks' worth.
        disturbed = window["outside_cpu_s"] + window["steal_s"] >= _MIN_NOISE_SECONDS
        record["noisy"] = window["noise"] > config.noise_threshold and disturbed
    return record


def _describe_workloads(config: BenchConfig, n_jobs: int) -> dict:
    described = {}
    for name, strategies in _selected(config):
        workload = get_workload(name)
        params = workload.params[config.mode]
        described[name] = {
            "number": workload.number,
            "title": workload.title,
            "metric": workload.metric,
            "description": workload.describe(params, n_jobs),
            "params": dict(params),
            "strategies": list(strategies),
            "pinned": workload.pinned,
            "baseline": workload.baseline,
            "neighbour": workload.neighbour,
            "cgroup": dict(workload.cgroup) if workload.cgroup else None,
            "notes": workload.notes,
        }
    return described


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def machine_info(n_jobs: int) -> dict:
    """The machine, the software and the load, as recorded with every result."""
    topology = read_topology()
    allowed = topology.allowed
    info = {
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "system": platform.system(),
        "python": platform.python_version(),
        "online_cpus": len(topology.online),
        "allowed_cpus": sorted(allowed),
        "physical_cores": topology.count_cores(allowed),
        "packages": len([p for p in topology.packages.values() if p & allowed]),
        "numa_nodes": len([n for n in topology.numa_nodes.values() if n & allowed]),
        "cpu_quota": topology.cpu_quota,
        "n_jobs": n_jobs,
        "load_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages_versions": _versions(),
        "blas": _blas_info(),
        "thread_env_removed": {
            name: os.environ[name] for name in THREAD_ENV_VARS if name in os.environ
        },
    }
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict:
    versions = {}
    for package in ("numpy", "scipy", "scikit-learn", "joblib", "threadpoolctl", "distributed"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _blas_info() -> list[dict]:
    """The thread pools numpy loads, seen from a fresh interpreter (not from this one)."""
    code = (
        "import json, numpy\nfrom threadpoolctl import threadpool_info\n"
        "print(json.dumps([{k: p.get(k) for k in ('internal_api', 'version', 'num_threads',"
        " 'threading_layer', 'architecture')} for p in threadpool_info()]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV_VARS}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return []
