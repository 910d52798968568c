"""Turn a result document into numbers per cell, a terminal table and a JSON file.

A cell is one (workload, strategy) pair over all rounds. Timeouts count as +infinity: a
median or maximum that lands on one shows as "> N s", never as a made-up time. Ratios to
pinned are taken pair by pair (the two runs of one round, made minutes apart at most) and
their median is reported: that cancels most of a machine's slow drifts.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "cell_runs",
    "current_runs",
    "finite",
    "format_table",
    "paired",
    "robust_median",
    "summarize",
    "write_json",
]

INF = math.inf


def current_runs(doc: dict) -> list[dict]:
    """Every run that counts: those measured again after a noisy attempt are left out."""
    return [r for r in doc["runs"] if not r.get("superseded")]


def cell_runs(doc: dict, workload: str, strategy: str) -> list[dict]:
    """The runs of one cell, by round."""
    runs = [r for r in current_runs(doc) if r["workload"] == workload and r["strategy"] == strategy]
    return sorted(runs, key=lambda r: r["round"])


def _value(run: dict) -> float | None:
    """Seconds of a run: its time, +inf for a timeout, None when it has none."""
    if run["status"] == "ok":
        return run["time"]
    if run["status"] == "timeout":
        return INF
    return None


def robust_median(values: Sequence[float]) -> float | None:
    """Median that copes with +inf (timeouts) and NaN-free input; None when empty."""
    values = sorted(values)
    if not values:
        return None
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    low, high = values[middle - 1], values[middle]
    return INF if INF in (low, high) else (low + high) / 2


def paired(doc: dict, workload: str, a: str, b: str, op: str = "ratio") -> list[float]:
    """Per round where both ran: ``a / b`` (``op="ratio"``) or ``a - b`` (``"difference"``).

    A timed-out ``a`` against a finished ``b`` gives +inf; the reverse gives 0 for a ratio;
    rounds where both timed out, or either failed, are left out.
    """
    by_round = {r["round"]: _value(r) for r in cell_runs(doc, workload, b)}
    result = []
    for run in cell_runs(doc, workload, a):
        va, vb = _value(run), by_round.get(run["round"])
        if va is None or vb is None or (va == INF and vb == INF):
            continue
        if op == "difference":
            result.append(va - vb)
        elif vb == INF:
            result.append(0.0)
        elif va == INF:
            result.append(INF)
        elif vb > 0:
            result.append(va / vb)
    return result


def _median_of(runs: list[dict], getter) -> float | None:
    values = [v for v in map(getter, runs) if v is not None]
    return statistics.median(values) if values else None


def _window(run: dict, role: str, key: str):
    window = run.get("window") or {}
    if not window.get("available"):
        return None
    return window.get(role, {}).get(key)


def summarize(doc: dict) -> dict:
    """Numbers per cell: ``summary[workload][strategy] -> dict`` (see the docs page)."""
    n_jobs = doc["config"]["n_jobs"]
    summary: dict[str, dict[str, dict]] = {}
    for name, workload in doc["workloads"].items():
        cells = {}
        for strategy in workload["strategies"]:
            runs = cell_runs(doc, name, strategy)
            if not runs:
                continue
            values = [v for v in map(_value, runs) if v is not None]
            ok = [r for r in runs if r["status"] == "ok"]
            counts = {
                "ok": len(ok),
                "timeouts": sum(r["status"] == "timeout" for r in runs),
                "failed": sum(r["status"] in ("failed", "skipped") for r in runs),
            }
            unavailable = all(r["status"] == "unavailable" for r in runs)
            reasons = [r["reason"] for r in runs if r.get("reason")]
            problems: dict[str, int] = {}
            for r in runs:
                if r["status"] in ("timeout", "failed", "skipped") and r.get("reason"):
                    key = f"{r['status']}: {r['reason']}"
                    problems[key] = problems.get(key, 0) + 1
            cell = {
                "runs": len(runs),
                **counts,
                "unavailable": unavailable,
                "reason": reasons[0] if reasons else None,
                "times": [_value(r) for r in runs],
                "statuses": [r["status"] for r in runs],
                "problems": problems,
                "median": robust_median(values),
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "timeout": runs[0].get("timeout"),
                "noisy_runs": sum(bool(r.get("noisy")) for r in runs),
                "noise_max": max((r.get("noise", 0.0) for r in runs), default=0.0),
                "migrations_workers": _median_of(ok, lambda r: _window(r, "workers", "migrations")),
                "migrations_main": _median_of(ok, lambda r: _window(r, "main", "migrations")),
                "preempt_workers_per_s": _median_of(
                    ok,
                    lambda r: (_window(r, "workers", "involuntary_switches") or 0) / r["time"],
                ),
                "preempt_main_per_s": _median_of(
                    ok, lambda r: (_window(r, "main", "involuntary_switches") or 0) / r["time"]
                ),
                "main_cpu_s": _median_of(ok, lambda r: _window(r, "main", "cpu_s")),
                # A daemon's rate is known for runs cut at their timeout too.
                "daemon_rate": _median_of(
                    [r for r in runs if r["status"] in ("ok", "timeout")],
                    lambda r: (r.get("extra") or {}).get("daemon_rate"),
                ),
                "tasks": _median_of(ok, lambda r: r.get("extra", {}).get("tasks")),
                "busy_workers": _median_of(ok, _busy_workers),
                "budget_cpus": _median_of(ok, lambda r: r.get("extra", {}).get("budget_cpus")),
                "jobs": _job_medians(ok),
            }
            cells[strategy] = cell
        _relative(doc, name, workload, cells, n_jobs)
        summary[name] = cells
    return summary


def _job_medians(runs: list[dict]) -> dict[str, float]:
    """Median time of each job a run reports in ``extra["jobs"]`` (workloads of several
    jobs, or a job and its neighbour: their run's time is the makespan)."""
    names = {name for r in runs for name in (r.get("extra") or {}).get("jobs") or {}}
    return {
        name: _median_of(
            runs, lambda r, name=name: ((r.get("extra") or {}).get("jobs") or {}).get(name)
        )
        for name in sorted(names)
    }


#: CPU seconds a worker process must use in the window to count as one that worked.
_BUSY_CPU_S = 0.05


def _busy_workers(run: dict) -> int | None:
    """Worker processes that did work in the window (not idle helpers such as loky's
    resource tracker); None when the kernel's counters were unavailable."""
    window = run.get("window") or {}
    if not window.get("available"):
        return None
    return sum(
        1
        for process in window.get("processes", [])
        if process["role"] == "worker" and process["cpu_s"] >= _BUSY_CPU_S
    )


def _relative(doc, name, workload, cells, n_jobs) -> None:
    """Speedups over sequential, ratios to pinned, throughput, the daemon's share."""
    pinned = workload["pinned"] if workload["pinned"] in cells else "pinned"
    sequential = cells.get("sequential", {}).get("median")
    idle = cells.get("none", {}).get("daemon_rate")
    for strategy, cell in cells.items():
        median = cell["median"]
        if workload["metric"] == "throughput" and median and cell["tasks"]:
            cell["throughput"] = 0.0 if median == INF else cell["tasks"] / median
        if sequential and median and strategy != "none":
            cell["speedup"] = 0.0 if median == INF else sequential / median
            cell["efficiency"] = cell["speedup"] / n_jobs
        if strategy != pinned and pinned in cells and strategy != "none":
            ratios = paired(doc, name, strategy, pinned)
            cell["vs_pinned"] = robust_median(ratios)
        if idle and cell["daemon_rate"] is not None and strategy != "none":
            cell["daemon_share"] = cell["daemon_rate"] / idle


# -- the terminal table -------------------------------------------------------------------


def _seconds(value: float | None, timeout: float | None) -> str:
    if value is None:
        return "-"
    if value == INF:
        return f"> {timeout:g}" if timeout else "> t/o"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value == INF:
        return "> all"
    if value == 0.0:
        return "pinned t/o"  # only pinned timed out: no finite ratio to show
    return f"{value:.2f}x"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _header(doc: dict) -> list[str]:
    machine, config = doc["machine"], doc["config"]
    runs = current_runs(doc)
    noisy = sum(bool(r.get("noisy")) for r in runs)
    measured = [r for r in runs if "noise" in r]
    retried = len(doc["runs"]) - len(runs)
    noise = [r["noise"] for r in measured]
    lines = [
        f"pinbackend bench ({config['mode']}): {config['n_jobs']} workers, "
        f"{config['repeats']} round(s), {len(doc['runs'])} runs in {doc.get('duration_s', '?')} s"
        + ("  [INTERRUPTED]" if doc.get("interrupted") else ""),
        f"machine: {machine['cpu_model']}, {machine['physical_cores']} physical cores, "
        f"{len(machine['allowed_cpus'])} CPUs allowed, {machine['packages']} package(s), "
        f"{machine['numa_nodes']} NUMA node(s); Linux {machine['kernel']}, "
        f"Python {machine['python']}",
    ]
    if noise:
        lines.append(
            f"noise (CPU used outside the benchmark on its CPUs): median "
            f"{statistics.median(noise):.1%}, max {max(noise):.1%}; {noisy} of {len(measured)} "
            f"runs above {config['noise_threshold']:.0%} are marked *"
            + (f" ({retried} disturbed runs were measured again)" if retried else "")
            + (" -- TIMINGS ARE NOT RELIABLE" if noisy > len(measured) / 4 else "")
        )
    return lines


_COLUMNS = (
    ("strategy", 24, "<"),
    ("median", 7, ">"),
    ("min", 7, ">"),
    ("max", 7, ">"),
    ("speedup", 7, ">"),
    ("vs pinned", 9, ">"),
    ("migr w/m", 9, ">"),
    ("preempt/s", 9, ">"),
    ("runs (s)", 0, "<"),
)


def _row(values: Sequence[str]) -> str:
    cells = []
    for (_, width, align), value in zip(_COLUMNS, values, strict=True):
        cells.append(f"{value:{align}{width}}" if width else value)
    return "  ".join(cells).rstrip()


def format_table(doc: dict, summary: dict) -> str:
    """The table: one block per workload, one row per strategy, every run listed."""
    lines = _header(doc)
    labels = {name: info["label"] for name, info in doc["strategies"].items()}
    for name, workload in doc["workloads"].items():
        cells = summary.get(name, {})
        if not cells:
            continue
        unit = {"time": "s", "throughput": "s", "start": "s"}[workload["metric"]]
        lines += [
            "",
            f"{workload['number']}. {workload['title']}: {workload['description']} ({unit})",
            _row([c[0] for c in _COLUMNS]),
        ]
        for strategy, cell in cells.items():
            lines.append(_cell_row(labels.get(strategy, strategy), cell, workload))
        lines += _cell_notes(cells, workload, labels)
    return "\n".join(lines)


def _cell_row(label: str, cell: dict, workload: dict) -> str:
    if cell["unavailable"]:
        return _row([label, "n/a", "", "", "", "", "", "", cell["reason"] or ""])
    timeout = cell["timeout"]
    noisy = "*" if cell["noisy_runs"] else ""
    finished = sorted(t for t in cell["times"] if t is not None)
    others = [s for s in cell["statuses"] if s not in ("ok", "timeout")]
    runs = " ".join([_seconds(t, timeout) for t in finished] + others)
    migrations = (
        f"{_count(cell['migrations_workers'])}/{_count(cell['migrations_main'])}"
        if cell["migrations_main"] is not None
        else "-"
    )
    speedup = cell.get("speedup")
    return _row(
        [
            label + noisy,
            _seconds(cell["median"], timeout),
            _seconds(cell["min"], timeout),
            _seconds(cell["max"], timeout),
            "-" if speedup is None else f"{speedup:.2f}x",
            _ratio(cell.get("vs_pinned")),
            migrations,
            _count(cell["preempt_workers_per_s"]),
            runs,
        ]
    )


def _cell_notes(cells: dict, workload: dict, labels: dict) -> list[str]:
    notes = []
    for strategy, cell in cells.items():
        label = labels.get(strategy, strategy)
        if cell.get("throughput") is not None:
            notes.append(f"   {label}: {cell['throughput']:.0f} tasks/s")
        if cell.get("daemon_share") is not None:
            notes.append(
                f"   {label}: the daemon kept {cell['daemon_share']:.0%} of its rate alone"
            )
        elif strategy == "none" and cell.get("daemon_rate"):
            notes.append(f"   daemon alone: {cell['daemon_rate']:.0f} work units/s")
        if cell.get("budget_cpus") is not None:
            notes.append(
                f"   {label}: {_count(cell['busy_workers'])} busy worker process(es); "
                f"CPU budget seen inside: {_count(cell['budget_cpus'])}"
            )
        if cell.get("jobs"):
            times = ", ".join(f"{name} {seconds:.3g} s" for name, seconds in cell["jobs"].items())
            notes.append(f"   {label}: {times} (medians)")
        for problem, count in cell["problems"].items():
            notes.append(f"   {label}: {count} run(s) {problem}")
    return notes


def write_json(doc: dict, path: str | Path) -> Path:
    """Write the document (runs, summary, targets) as JSON; +inf is written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(doc), indent=1, sort_keys=False) + "\n")
    return path


def finite(value):
    """JSON has no infinity: timeouts become null (their status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
