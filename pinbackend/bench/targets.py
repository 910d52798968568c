"""The benchmark targets, checked on a result document (``bench --check``).

Every check works on medians of paired measurements (the two strategies' runs of the same
round) and says ``pass``, ``fail``, ``n/a`` (a strategy or workload was not measured, or is
unavailable, with the reason) or ``info`` (a number to report, no threshold). A check whose
runs include a noisy one says so: its verdict is then weak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .report import INF, cell_runs, paired, robust_median

__all__ = ["TOLERANCE", "TargetResult", "check_targets", "format_targets", "register_targets"]

#: "No slower than ... by more than 3 %", "within 3 %".
TOLERANCE = 1.03

# Why threads can beat processes on a workload, for the report (the docs say more).
THREADING_WINS = {
    "tiny": "threads share memory: no pickling, no pipes, no other process to wake",
    "sklearn": "threads skip pickling the data and results between processes",
    "kmeans": "threads skip pickling the data and results between processes",
}


#: Target checks that workload modules register (each called with the checker), and the
#: workloads whose targets they set alone (no generic "no slower than the baseline" there).
_REGISTERED: list[Callable] = []
_OWN_TARGETS: set[str] = set()


def register_targets(check: Callable, workloads: tuple[str, ...] = ()) -> None:
    """Add ``check(checker)`` to :func:`check_targets`; ``workloads`` get only its targets."""
    if check not in _REGISTERED:
        _REGISTERED.append(check)
    _OWN_TARGETS.update(workloads)


@dataclass(frozen=True)
class TargetResult:
    """One checked target."""

    key: str
    target: str
    status: str
    detail: str
    noisy: bool = False

    def to_dict(self) -> dict:
        """Plain-data form for the JSON report."""
        return {
            "key": self.key,
            "target": self.target,
            "status": self.status,
            "detail": self.detail,
            "noisy": self.noisy,
        }


def _fmt(value: float) -> str:
    return "> timeout" if value == INF else f"{value:.2f}"


class _Checker:
    def __init__(self, doc: dict, summary: dict):
        self.doc, self.summary = doc, summary
        self.results: list[TargetResult] = []

    def missing(self, workload: str, *strategies: str) -> str | None:
        """Why a comparison cannot be made, or None."""
        if workload not in self.summary:
            return f"workload {workload!r} was not run"
        for strategy in strategies:
            cell = self.summary[workload].get(strategy)
            if cell is None:
                return f"{strategy!r} was not measured on {workload!r}"
            if cell["unavailable"]:
                return f"{strategy!r} unavailable: {cell['reason']}"
            if not cell["ok"] and not cell["timeouts"]:
                return f"{strategy!r} has no finished run on {workload!r} ({cell['reason']})"
        return None

    def comparable(self, key: str, target: str, workload: str, *strategies: str) -> bool:
        """Whether ``strategies`` can be compared on ``workload``; else the target is n/a."""
        why = self.missing(workload, *strategies)
        if why:
            self.add(key, target, "n/a", why)
        return why is None

    def noisy(self, workload: str, *strategies: str) -> bool:
        return any(r.get("noisy") for s in strategies for r in cell_runs(self.doc, workload, s))

    def add(self, key, target, status, detail, noisy=False) -> None:
        self.results.append(TargetResult(key, target, status, detail, noisy))

    def ratio(
        self,
        key: str,
        target: str,
        workload: str,
        a: str,
        b: str,
        passes: Callable[[float], bool],
        explain: str,
    ) -> float | None:
        """Check the median of paired ``a / b`` time ratios with ``passes``."""
        if not self.comparable(key, target, workload, a, b):
            return None
        ratios = paired(self.doc, workload, a, b)
        median = robust_median(ratios)
        if median is None:
            self.add(key, target, "n/a", f"no round where both {a!r} and {b!r} finished")
            return None
        detail = (
            f"{explain}: median of {len(ratios)} paired ratios {a}/{b} = {_fmt(median)} "
            f"(each: {', '.join(_fmt(r) for r in sorted(ratios))})"
        )
        status = "pass" if passes(median) else "fail"
        self.add(key, target, status, detail, self.noisy(workload, a, b))
        return median


def check_targets(doc: dict, summary: dict) -> list[TargetResult]:
    """Check every benchmark target on ``doc`` (with ``summary`` from :func:`summarize`)."""
    check = _Checker(doc, summary)
    n_jobs = doc["config"]["n_jobs"]

    check.ratio(
        "blas-vs-handpool",
        "BLAS: pinned within 3% of a hand-pinned multiprocessing.Pool",
        "blas",
        "pinned",
        "handpool",
        lambda r: r <= TOLERANCE,
        "pinned time / hand-pinned time must be <= 1.03",
    )
    key, target = "blas-efficiency", "BLAS: efficiency against ideal speedup"
    if check.comparable(key, target, "blas", "pinned", "sequential"):
        speedup = summary["blas"]["pinned"].get("speedup") or 0.0
        check.add(
            key,
            target,
            "info",
            f"pinned speedup {speedup:.2f}x over sequential; ideal {n_jobs}x (cores x "
            f"sequential rate): efficiency {speedup / n_jobs:.0%}",
            check.noisy("blas", "pinned", "sequential"),
        )
    check.ratio(
        "blas-vs-multiprocessing",
        "BLAS: pinned >= 2x faster than uncapped multiprocessing",
        "blas",
        "multiprocessing",
        "pinned",
        lambda r: r >= 2.0,
        "multiprocessing time / pinned time must be >= 2",
    )
    check.ratio(
        "nested-vs-naive",
        "Nested: pinned >= 2x faster than the naive nested case",
        "nested",
        "multiprocessing",
        "pinned",
        lambda r: r >= 2.0,
        "naive nested (multiprocessing outside, threads inside) / pinned must be >= 2",
    )
    for name, workload in doc["workloads"].items():
        if workload["metric"] != "time" or workload.get("neighbour") == "daemon":
            continue
        if name in _OWN_TARGETS:
            continue
        pinned, baseline = workload["pinned"], workload["baseline"]
        check.ratio(
            f"vs-default-{name}",
            f"{workload['number']}. {workload['title']}: {pinned} no slower than {baseline} "
            f"by more than 3%",
            name,
            pinned,
            baseline,
            lambda r: r <= TOLERANCE,
            f"{pinned} time / {baseline} time must be <= 1.03",
        )
    _daemon(check)
    _threading(check)
    _pinned_threads(check)
    check.ratio(
        "tiny-throughput",
        "Tiny tasks: pinned dispatch throughput >= 0.9 of loky's",
        "tiny",
        "loky",
        "pinned",
        lambda r: r >= 0.9,
        "pinned throughput / loky throughput (= loky time / pinned time) must be >= 0.9",
    )
    _pool_start(check)
    for registered in _REGISTERED:
        registered(check)
    return check.results


def _daemon(check: _Checker) -> None:
    """Not a target, but the point of it all: the pinned job leaves the daemon alone."""
    key, target = "daemon-left-alone", "Daemon (extra check): keeps >= 90% of its rate"
    if not check.comparable(key, target, "daemon", "pinned", "none"):
        return
    cells = check.summary["daemon"]
    share = cells["pinned"].get("daemon_share")
    if share is None:
        check.add(key, target, "n/a", "no daemon rate was measured")
        return
    others = ", ".join(
        f"{s} {c['daemon_share']:.0%}"
        for s, c in cells.items()
        if s not in ("pinned", "none") and c.get("daemon_share") is not None
    )
    check.add(
        key,
        target,
        "pass" if share >= 0.9 else "fail",
        f"daemon rate while the pinned job runs: {share:.0%} of its rate alone"
        + (f" (others: {others})" if others else ""),
        check.noisy("daemon", "pinned", "none"),
    )


def _threading(check: _Checker) -> None:
    wins = []
    for name, cells in check.summary.items():
        cell = cells.get("threading")
        ratio = cell.get("vs_pinned") if cell else None
        if ratio is not None and ratio < 1.0:
            reason = THREADING_WINS.get(name, "see docs/benchmarks.md")
            wins.append(f"{name} ({ratio:.2f}x: {reason})")
    check.add(
        "threading-wins",
        "Where threading beats pinned, say why",
        "info",
        "threading beats pinned on: " + "; ".join(wins) if wins else "threading never beats pinned",
    )


def _pinned_threads(check: _Checker) -> None:
    """Pinned threads: at least as good as joblib threading where threads win, clearly
    better where threading oversubscribes, and close to pinned processes on BLAS."""
    check.ratio(
        "threads-kmeans",
        "KMeans GridSearchCV: pinned threads no slower than joblib threading by more than 3%",
        "kmeans",
        "pinned-threads",
        "threading",
        lambda r: r <= TOLERANCE,
        "pinned-threads time / threading time must be <= 1.03",
    )
    check.ratio(
        "threads-blas",
        "BLAS: pinned threads >= 1.2x faster than joblib threading",
        "blas",
        "threading",
        "pinned-threads",
        lambda r: r >= 1.2,
        "threading time / pinned-threads time must be >= 1.2",
    )
    check.ratio(
        "threads-vs-processes-blas",
        "BLAS: pinned threads within 5% of pinned processes",
        "blas",
        "pinned-threads",
        "pinned",
        lambda r: r <= 1.05,
        "pinned-threads time / pinned time must be <= 1.05",
    )


def _pool_start(check: _Checker) -> None:
    key, target = "pool-start", "Pool start: pinned within 100 ms of loky"
    if not check.comparable(key, target, "start", "pinned", "loky"):
        return
    differences = paired(check.doc, "start", "pinned", "loky", op="difference")
    median = robust_median(differences)
    if median is None:
        check.add(key, target, "n/a", "no round where both pools started")
        return
    check.add(
        key,
        target,
        "pass" if median <= 0.1 else "fail",
        f"median of {len(differences)} paired differences pinned - loky = "
        f"{median * 1000:+.0f} ms (each: "
        + ", ".join(f"{d * 1000:+.0f}" for d in sorted(differences))
        + ")",
        check.noisy("start", "pinned", "loky"),
    )


def format_targets(results: list[TargetResult]) -> str:
    """One line per target: PASS/FAIL/N/A/INFO, the target, the numbers."""
    lines = ["targets:"]
    for result in results:
        mark = result.status.upper()
        noisy = " [noisy runs: weak verdict]" if result.noisy else ""
        lines.append(f"  {mark:<4}  {result.target}{noisy}")
        lines.append(f"        {result.detail}")
    failed = sum(r.status == "fail" for r in results)
    passed = sum(r.status == "pass" for r in results)
    lines.append(f"  {passed} passed, {failed} failed")
    return "\n".join(lines)
