"""Compare runs and sweep points: learning curves with a band over seeds, and a table with a winner.

    asgd-sim compare results/straggler                      # a sweep: one series per grid point
    asgd-sim compare results/a results/b --metric train_loss --x updates --target 0.9

Each series is one run folder, or one point of a sweep with all its seeds. Curves are resampled
on a common x grid; the line is the mean over the seeds still running at that x and the band its
95 % t-interval (seeds are independent runs). The table gives, per series, time to the target
accuracy (``--target``, else the scenario's ``run.target_accuracy``), final loss and accuracy,
throughput, staleness mean and p95 and lock wait, each as mean +- 95 % half-width. The winner is
the series that reaches the target first (among those reaching it in the most seeds); without a
target, the best final value of ``--metric``; without learning curves, the highest throughput.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScenarioError
from ..results.load import flatten_summary, is_run_dir, is_sweep_dir, load_run, load_sweep

__all__ = ["Series", "Comparison", "collect_series", "compare", "mean_ci", "band", "plot_curves", "format_table", "METRICS", "XS"]

METRICS = ("test_accuracy", "train_loss", "staleness_mean", "throughput")
XS = {"sim_time": "sim_time", "updates": "update"}
METRIC_LABELS = {"test_accuracy": "test accuracy", "train_loss": "train loss", "staleness_mean": "staleness (mean so far)",
                 "throughput": "updates / simulated s"}
X_LABELS = {"sim_time": "simulated time (s)", "updates": "server updates"}
_COLORS = [f"C{i}" for i in range(10)]


@dataclass
class Series:
    """One line of the comparison: a run folder, or a sweep point with its seeds."""

    label: str
    runs: pd.DataFrame  # one row per run: flattened summary fields, "path", "status"
    curves: list[pd.DataFrame] = field(default_factory=list)  # metrics frames of the successful runs
    target: float | None = None  # the scenario's run.target_accuracy, if any

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"]


@dataclass
class Comparison:
    series: list[Series]
    rows: list[dict[str, Any]]  # the table: one dict per series
    winner: int | None
    reason: str
    metric: str
    x: str
    target: float | None
    figure: Path | None = None
    table_file: Path | None = None


# ---------------------------------------------------------------------------------- inputs


def collect_series(paths: list[str | Path]) -> list[Series]:
    """Series from run folders and sweep folders (a sweep gives one series per grid point)."""
    series: list[Series] = []
    many = len(paths) > 1
    for raw in paths:
        folder = Path(raw)
        if is_sweep_dir(folder):
            runs = load_sweep(folder)
            if runs.empty:
                raise ScenarioError(str(folder), "is a sweep with no finished runs yet; run asgd-sim sweep first")
            runs = runs.assign(path=[str(folder / "runs" / r) for r in runs["run"]])
            for _, group in runs.groupby("point", sort=True):
                label = str(group["label"].iloc[0])
                s = Series(f"{folder.name}: {label}" if many else label, group.reset_index(drop=True))
                _add_curves(s)
                series.append(s)
        elif is_run_dir(folder):
            frame = load_run(folder)
            row = {**flatten_summary(frame.attrs["summary"]), "path": str(folder), "status": "ok", "seed": 0}
            s = Series(folder.name, pd.DataFrame([row]), [frame], _target_of(frame))
            series.append(s)
        else:
            raise ScenarioError(str(folder), "is neither a run folder (summary.json) nor a sweep folder (sweep.json); "
                                "give folders written by asgd-sim run or asgd-sim sweep")
    return series


def _target_of(frame: pd.DataFrame) -> float | None:
    value = frame.attrs.get("scenario", {}).get("run", {}).get("target_accuracy")
    return float(value) if value is not None else None


def _add_curves(s: Series) -> None:
    for path in s.ok["path"]:
        frame = load_run(path)
        s.curves.append(frame)
        s.target = s.target if s.target is not None else _target_of(frame)


# ---------------------------------------------------------------------------------- statistics


def mean_ci(values: Any) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (NaN half-width for fewer than 2 values)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    from scipy.stats import t

    return float(x.mean()), float(t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def band(curves: list[pd.DataFrame], x: str, metric: str, points: int = 200) -> pd.DataFrame:
    """Curves resampled on a common grid: x, mean, lo, hi (95 % t-interval) and n (curves present).

    A curve counts from its first to its last row only (a run stopped at its target accuracy
    does not pretend to go on).
    """
    column = XS.get(x, x)
    pairs = []
    for curve in curves:
        cx, cy = curve[column].to_numpy(float), curve[metric].to_numpy(float)
        keep = np.isfinite(cx) & np.isfinite(cy)
        if keep.any():
            pairs.append((cx[keep], cy[keep]))
    if not pairs:
        return pd.DataFrame(columns=["x", "mean", "lo", "hi", "n"])
    top = max(px.max() for px, _ in pairs)
    low = min(px.min() for px, _ in pairs)
    grid = np.linspace(low, top, points) if top > low else np.array([low])
    ys = np.vstack([np.where((grid >= px[0]) & (grid <= px[-1]), np.interp(grid, px, py), np.nan) for px, py in pairs])
    n = np.isfinite(ys).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with 0 or 1 curves present: NaN is the answer
        mean = np.where(n > 0, np.nanmean(ys, axis=0), np.nan)
        std = np.nanstd(ys, axis=0, ddof=1) if len(pairs) > 1 else np.zeros_like(grid)
    from scipy.stats import t

    half = np.where(n >= 2, t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(np.maximum(n, 1)), np.nan)
    return pd.DataFrame({"x": grid, "mean": mean, "lo": mean - half, "hi": mean + half, "n": n})


def _reach(curve: pd.DataFrame, target: float) -> tuple[float | None, float | None]:
    """(simulated time, updates) when test accuracy first reached ``target``."""
    acc = curve["test_accuracy"].to_numpy(float)
    hit = np.flatnonzero(acc >= target)
    if not hit.size:
        return None, None
    return float(curve["sim_time"].iloc[hit[0]]), float(curve["update"].iloc[hit[0]])


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return list(frame[name]) if name in frame.columns else []


def summarize(s: Series, target: float | None, x: str) -> dict[str, Any]:
    """The table row of one series (means and 95 % half-widths over its successful runs)."""
    ok = s.ok
    row: dict[str, Any] = {"label": s.label, "runs": len(ok), "failed": len(s.runs) - len(ok)}
    if target is not None:
        times, updates = [], []
        if s.curves and any(np.isfinite(c["test_accuracy"].to_numpy(float)).any() for c in s.curves):
            for curve in s.curves:
                t_hit, u_hit = _reach(curve, target)
                times.append(t_hit)
                updates.append(u_hit)
        reached = sum(v is not None for v in times)
        row["reached"] = reached
        row["to_target"], row["to_target_ci"] = mean_ci(times if x == "sim_time" else updates)
    for name, column in (("final_accuracy", "final_accuracy"), ("final_loss", "final_loss"), ("updates_per_s", "updates_per_s"),
                         ("staleness_mean", "staleness_mean"), ("staleness_p95", "staleness_p95"), ("lock_wait_mean", "lock_wait_mean")):
        row[name], row[f"{name}_ci"] = mean_ci(_column(ok, column))
    return row


def pick_winner(rows: list[dict[str, Any]], metric: str, has_curves: bool) -> tuple[int | None, str]:
    """Index of the best series and why (see the module docstring)."""
    if not rows:
        return None, ""
    if rows[0].get("reached") is not None and any(r.get("reached") for r in rows):
        best = max(r["reached"] / max(r["runs"], 1) for r in rows)
        candidates = [i for i, r in enumerate(rows) if r["runs"] and r["reached"] / r["runs"] == best and math.isfinite(r["to_target"])]
        if candidates:
            i = min(candidates, key=lambda j: rows[j]["to_target"])
            return i, "reaches the target first"
    finals = {"test_accuracy": ("final_accuracy", max, "highest final accuracy"), "train_loss": ("final_loss", min, "lowest final loss"),
              "staleness_mean": ("staleness_mean", min, "lowest mean staleness"), "throughput": ("updates_per_s", max, "highest throughput")}
    key, better, why = finals[metric] if has_curves else finals["throughput"]
    scored = [i for i, r in enumerate(rows) if math.isfinite(r.get(key, math.nan))]
    if not scored:
        key, better, why = finals["throughput"]
        scored = [i for i, r in enumerate(rows) if math.isfinite(r.get(key, math.nan))]
    if not scored:
        return None, ""
    return better(scored, key=lambda j: rows[j][key]), why


# ---------------------------------------------------------------------------------- output


def _fmt(value: float, ci: float = math.nan, scale: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value * scale:.3g}"
    return text + (f" ±{ci * scale:.2g}" if ci is not None and math.isfinite(ci) else "")


def table_columns(rows: list[dict[str, Any]], target: float | None, x: str) -> list[tuple[str, Any]]:
    """(header, row -> text) for the columns that have data."""
    cols: list[tuple[str, Any]] = [("series", lambda r: r["label"]),
                                   ("runs", lambda r: f"{r['runs']}" + (f" (+{r['failed']} failed)" if r["failed"] else ""))]
    if target is not None:
        head = f"{'time' if x == 'sim_time' else 'updates'} to {target:g} acc" + (" (s)" if x == "sim_time" else "")
        cols.append((head, lambda r: (_fmt(r["to_target"], r["to_target_ci"]) + (f" [{r['reached']}/{r['runs']}]" if r["reached"] < r["runs"] else ""))
                     if r["reached"] else f"not reached [0/{r['runs']}]"))
    for key, head, scale in (("final_loss", "final loss", 1.0), ("final_accuracy", "final acc", 1.0), ("updates_per_s", "updates/s", 1.0),
                             ("staleness_mean", "staleness mean", 1.0), ("staleness_p95", "staleness p95", 1.0),
                             ("lock_wait_mean", "lock wait (ms)", 1e3)):
        if any(math.isfinite(r.get(key, math.nan)) for r in rows):
            cols.append((head, lambda r, k=key, s=scale: _fmt(r[k], r[f"{k}_ci"], s)))
    return cols


def format_table(comparison: Comparison) -> str:
    """The table as aligned text, the winner marked with *."""
    cols = table_columns(comparison.rows, comparison.target, comparison.x)
    cells = [[head for head, _ in cols]] + [[str(get(r)) for _, get in cols] for r in comparison.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = []
    for n, row in enumerate(cells):
        mark = "*" if n and comparison.winner == n - 1 else " "
        lines.append(mark + " " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if comparison.winner is not None:
        lines.append(f"winner: {comparison.rows[comparison.winner]['label']} ({comparison.reason}; ± = 95 % interval over seeds)")
    return "\n".join(lines)


def plot_curves(series: list[Series], metric: str, x: str, ax: Any, target: float | None = None, highlight: int | None = None) -> None:
    """Mean curve and 95 % band per series on ``ax``."""
    drawn = 0
    for i, s in enumerate(series):
        b = band(s.curves, x, metric)
        if b.empty or not np.isfinite(b["mean"]).any():
            continue
        color = _COLORS[i % len(_COLORS)]
        enough = b["n"] >= max(1, math.ceil(len(s.curves) / 2))
        ax.plot(b["x"][enough], b["mean"][enough], color=color, lw=2.2 if i == highlight else 1.4,
                ls="-" if i < 10 else "--", label=s.label + (" *" if i == highlight else ""))
        # Every metric here is >= 0 and accuracy <= 1: a wide interval (few seeds) is drawn clipped to that range.
        floor = b["mean"] / 10 if metric == "train_loss" else 0.0  # log axis: a decade below the mean at most
        lo, hi = np.maximum(b["lo"], floor), (np.minimum(b["hi"], 1.0) if metric == "test_accuracy" else b["hi"])
        ax.fill_between(b["x"], lo, hi, where=np.isfinite(b["lo"]).to_numpy(), color=color, alpha=0.18, lw=0)
        drawn += 1
    if metric == "test_accuracy" and target is not None:
        ax.axhline(target, color="k", lw=0.8, ls=":")
    if metric == "train_loss" and drawn:
        ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7 if len(series) > 6 else 8, frameon=False, ncol=2 if len(series) > 8 else 1)


def plot_bars(comparison: Comparison, ax: Any) -> None:
    """The winner's criterion per series, with 95 % error bars."""
    rows = comparison.rows
    if comparison.reason == "reaches the target first":
        unit = "time" if comparison.x == "sim_time" else "updates"
        key, label = "to_target", f"{unit} to {comparison.target:g} accuracy" + (" (s)" if comparison.x == "sim_time" else "")
    else:
        key, label = {"highest final accuracy": ("final_accuracy", "final test accuracy"), "lowest final loss": ("final_loss", "final train loss"),
                      "lowest mean staleness": ("staleness_mean", "mean staleness")}.get(comparison.reason, ("updates_per_s", "updates / simulated s"))
    values = np.array([r.get(key, math.nan) for r in rows], dtype=float)
    errors = np.array([r.get(f"{key}_ci", math.nan) for r in rows], dtype=float)
    ys = np.arange(len(rows))[::-1]
    colors = [_COLORS[i % len(_COLORS)] for i in range(len(rows))]
    ax.barh(ys, np.nan_to_num(values), xerr=np.where(np.isfinite(errors), errors, 0), color=colors, alpha=0.8, capsize=3)
    for y, v in zip(ys, values, strict=True):
        if not math.isfinite(v):
            ax.text(0, y, "  not reached" if key == "to_target" else "  -", va="center", fontsize=7)
    ax.set_yticks(ys, [r["label"] + (" *" if i == comparison.winner else "") for i, r in enumerate(rows)], fontsize=7)
    ax.set_xlabel(label)
    ax.grid(alpha=0.3, axis="x")


def compare(paths: list[str | Path], metric: str | None = None, x: str = "sim_time", target: float | None = None,
            out: str | Path | None = None, name: str = "compare") -> Comparison:
    """Compare folders; write ``<name>.png`` and ``<name>.csv`` into ``out`` (default: the first folder)."""
    if not paths:
        raise ScenarioError("compare", "give at least one run or sweep folder")
    if x not in XS:
        raise ScenarioError("--x", f"= {x!r}: must be one of {', '.join(XS)}")
    if metric is not None and metric not in METRICS:
        raise ScenarioError("--metric", f"= {metric!r}: must be one of {', '.join(METRICS)}")
    series = collect_series(list(paths))
    has_curves = any(np.isfinite(c["test_accuracy"].to_numpy(float)).any() for s in series for c in s.curves)
    metric = metric or ("test_accuracy" if has_curves else "throughput")
    if target is None:
        targets = {s.target for s in series if s.target is not None}
        target = max(targets) if targets else None
    if not has_curves:
        target = None  # timing-only runs have no accuracy to reach
    rows = [summarize(s, target, x) for s in series]
    winner, reason = pick_winner(rows, metric, has_curves)
    comparison = Comparison(series, rows, winner, reason, metric, x, target)
    folder = Path(out) if out is not None else Path(paths[0])
    folder.mkdir(parents=True, exist_ok=True)
    comparison.figure = write_figure(comparison, folder / f"{name}.png")
    comparison.table_file = folder / f"{name}.csv"
    frame = pd.DataFrame(rows)
    frame.insert(0, "winner", [i == winner for i in range(len(rows))])
    frame.to_csv(comparison.table_file, index=False)
    return comparison


def write_figure(comparison: Comparison, path: Path) -> Path:
    from ..results.plots import plt

    n = len(comparison.series)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(4.2, 0.28 * n + 2)), gridspec_kw={"width_ratios": [1.6, 1]})
    plot_curves(comparison.series, comparison.metric, comparison.x, left, comparison.target, comparison.winner)
    left.set_title(f"{METRIC_LABELS[comparison.metric]} vs {X_LABELS[comparison.x]} (mean, 95 % band over seeds)", fontsize=10)
    plot_bars(comparison, right)
    right.set_title("winner: " + (comparison.rows[comparison.winner]["label"] if comparison.winner is not None else "-"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
