"""PNG chart of speedup over sequential per workload and strategy (matplotlib, optional).

One group of bars per timed workload (not tiny tasks or pool start, which have no speedup),
one bar per strategy at its median speedup, every run as a
dot (so two modes of a bimodal strategy show as two clusters), a dashed line at the ideal
speedup (the number of workers), timeouts as hatched bars at the speedup the timeout bounds.
"""

from __future__ import annotations

from pathlib import Path

from .report import INF

__all__ = ["MISSING_MATPLOTLIB", "write_chart"]

MISSING_MATPLOTLIB = (
    "no chart: matplotlib is not installed; install it with pip install 'pinbackend[bench]' "
    "(or pass --no-chart)"
)

_COLORS = {
    "sequential": "#999999",
    "handpool": "#8c6d31",
    "loky": "#1f77b4",
    "multiprocessing": "#d62728",
    "threading": "#9467bd",
    "dask": "#ff7f0e",
    "dask-pinned": "#bcbd22",
    "pinned": "#2ca02c",
}


def write_chart(doc: dict, summary: dict, path: str | Path) -> str | None:
    """Write the chart to ``path``; return None, or why no chart was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed, and none is touched
        import matplotlib.pyplot as plt
    except ImportError:
        return MISSING_MATPLOTLIB
    n_jobs = doc["config"]["n_jobs"]
    groups = []
    for name, workload in doc["workloads"].items():
        cells = summary.get(name, {})
        sequential = cells.get("sequential", {}).get("median")
        # Dispatch throughput and pool start have no meaningful speedup: their own tables.
        if workload["metric"] != "time" or not sequential or sequential == INF:
            continue
        bars = [
            (strategy, cell)
            for strategy, cell in cells.items()
            if strategy not in ("sequential", "none") and not cell["unavailable"]
        ]
        if bars:
            groups.append((f"{workload['number']}. {workload['title']}", sequential, bars))
    if not groups:
        return "no chart: no workload has both a sequential reference and other strategies"
    width = 0.8 / max(len(bars) for _, _, bars in groups)
    figure, axes = plt.subplots(figsize=(max(9, 1.6 * len(groups) + 3), 5), dpi=100)
    seen = set()
    for index, (_title, sequential, bars) in enumerate(groups):
        for position, (strategy, cell) in enumerate(bars):
            x = index - 0.4 + width * (position + 0.5)
            color = _COLORS.get(strategy, "#17becf")
            label = doc["strategies"].get(strategy, {}).get("label", strategy)
            median = cell["median"]
            timed_out = median == INF
            height = sequential / (cell["timeout"] if timed_out else median) if median else 0
            axes.bar(
                x,
                height,
                width * 0.9,
                color=color,
                alpha=0.35 if timed_out else 0.8,
                hatch="//" if timed_out else None,
                label=None if strategy in seen else label,
            )
            seen.add(strategy)
            runs = [t for t in cell["times"] if t is not None and t != INF]
            axes.scatter(
                [x] * len(runs), [sequential / t for t in runs], s=10, color="black", zorder=3
            )
    axes.axhline(n_jobs, color="black", linestyle="--", linewidth=1)
    axes.text(-0.45, n_jobs, f"ideal: {n_jobs}x", va="bottom", ha="left", fontsize=8)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels([title for title, _, _ in groups], rotation=20, ha="right", fontsize=8)
    axes.set_ylabel("speedup over sequential (1 thread)")
    axes.set_yscale("log")
    axes.set_title(
        f"pinbackend bench ({doc['config']['mode']}): {doc['machine']['cpu_model']}, "
        f"{n_jobs} workers; dots = runs, hatched = timed out",
        fontsize=9,
    )
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return None
