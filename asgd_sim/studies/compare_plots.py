"""The comparison's figure: learning curves with a band over seeds (left) and the winning
criterion per series (right)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from .series import flag
from .statistics import t_half_width
from .targets import X_COLUMNS

__all__ = ["band", "plot_curves", "plot_bars", "draw_comparison", "leader_marks", "METRIC_LABELS", "X_LABELS"]

METRIC_LABELS = {"test_accuracy": "test accuracy", "train_loss": "train loss", "staleness_mean": "staleness (mean so far)",
                 "throughput": "updates / simulated s"}
X_LABELS = {"sim_time": "simulated time (s)", "updates": "server updates"}
_COLORS = [f"C{i}" for i in range(10)]


def band(curves: list[pd.DataFrame], x: str, metric: str, points: int = 200, hold: list[bool] | None = None,
         log: bool = False) -> pd.DataFrame:
    """Curves resampled on a common grid: x, mean, lo, hi (95 % t-interval) and n (curves present).

    A curve counts from its first to its last row, unless ``hold`` says it stopped at its target:
    such a run is done, and holds its last value to the end of the grid, so that the band neither
    jumps (the runs that finished first are the good ones) nor widens (fewer runs left) as runs
    stop. ``log``: a grid evenly spaced on a log axis (from the smallest positive x).
    """
    column = X_COLUMNS.get(x, x)
    pairs = []
    for i, curve in enumerate(curves):
        cx, cy = curve[column].to_numpy(float), curve[metric].to_numpy(float)
        keep = np.isfinite(cx) & np.isfinite(cy)
        if keep.any():
            pairs.append((cx[keep], cy[keep], bool(hold[i]) if hold is not None else False))
    if not pairs:
        return pd.DataFrame(columns=["x", "mean", "lo", "hi", "n"])
    top = max(px.max() for px, _, _ in pairs)
    low = min(px.min() for px, _, _ in pairs)
    if log:
        positive = [px[px > 0].min() for px, _, _ in pairs if (px > 0).any()]
        low = min(positive) if positive else low
    if top <= low:
        grid = np.array([low])
    else:
        grid = np.geomspace(low, top, points) if log and low > 0 else np.linspace(low, top, points)
    ys = np.vstack([np.where((grid >= px[0]) & ((grid <= px[-1]) | held), np.interp(grid, px, py), np.nan) for px, py, held in pairs])
    n = np.isfinite(ys).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with 0 or 1 curves present: NaN is the answer
        mean = np.where(n > 0, np.nanmean(ys, axis=0), np.nan)
        std = np.nanstd(ys, axis=0, ddof=1) if len(pairs) > 1 else np.zeros_like(grid)
    half = np.where(n >= 2, t_half_width(std, n), np.nan)
    return pd.DataFrame({"x": grid, "mean": mean, "lo": mean - half, "hi": mean + half, "n": n})


def plot_curves(series: list[Any], metric: str, x: str, ax: Any, target: Any = None, marks: dict[int, str] | None = None,
                logx: bool = False) -> None:
    """Mean curve and 95 % band per series on ``ax`` (diverged runs left out, runs stopped at their
    target held at their last value: `band`); ``marks`` label the winner (*) or tied leaders (=)."""
    drawn = 0
    marked = marks or {}
    for i, s in enumerate(series):
        summaries = s.summaries()
        kept = [j for j, sm in enumerate(summaries) if not flag(sm.get("diverged"))]
        curves = [s.curves[j] for j in kept]
        hold = [summaries[j].get("stopped") == "target_accuracy" for j in kept]
        b = band(curves, x, metric, hold=hold, log=logx) if metric in (curves[0].columns if curves else ()) else pd.DataFrame()
        if b.empty or not np.isfinite(b["mean"].to_numpy(float)).any():
            continue
        color = _COLORS[i % len(_COLORS)]
        enough = b["n"] >= max(1, math.ceil(len(curves) / 2))
        left_out = len(summaries) - len(kept)
        label = s.label + marked.get(i, "") + (f" ({left_out} diverged left out)" if left_out else "")
        ax.plot(b["x"][enough], b["mean"][enough], color=color, lw=2.2 if i in marked else 1.4, ls="-" if i < 10 else "--", label=label)
        # Every metric here is >= 0 and accuracy <= 1: a wide interval (few seeds) is drawn clipped to that range.
        floor = b["mean"] / 10 if metric == "train_loss" else 0.0  # log axis: a decade below the mean at most
        lo, hi = np.maximum(b["lo"], floor), (np.minimum(b["hi"], 1.0) if metric == "test_accuracy" else b["hi"])
        ax.fill_between(b["x"], lo, hi, where=np.isfinite(b["lo"]).to_numpy(), color=color, alpha=0.18, lw=0)
        drawn += 1
    if target is not None and target.metric == metric:
        ax.axhline(target.value, color="k", lw=0.8, ls=":")
    if metric == "train_loss" and drawn:
        ax.set_yscale("log")
    if logx and drawn:
        ax.set_xscale("log")
    ax.set_xlabel(X_LABELS[x] + (" (log)" if logx else ""))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7 if len(series) > 6 else 8, frameon=False, ncol=2 if len(series) > 8 else 1)


def plot_bars(comparison: Any, ax: Any) -> None:
    """The winning criterion per series, with 95 % error bars."""
    rows = comparison.rows
    values = np.array([r.get("criterion", math.nan) for r in rows], dtype=float)
    errors = np.array([r.get("criterion_ci", math.nan) for r in rows], dtype=float)
    ys = np.arange(len(rows))[::-1]
    colors = [_COLORS[i % len(_COLORS)] for i in range(len(rows))]
    errors = np.where(np.isfinite(errors), errors, 0.0)
    below = np.minimum(errors, np.abs(np.nan_to_num(values))) if (np.nan_to_num(values) >= 0).all() else errors  # (no negative times)
    ax.barh(ys, np.nan_to_num(values), xerr=[below, errors], color=colors, alpha=0.8, capsize=3)
    for y, v in zip(ys, values, strict=True):
        if not math.isfinite(v):
            ax.text(0, y, "  not reached" if comparison.criterion.key == "to_target" else "  -", va="center", fontsize=7)
    marks = leader_marks(comparison)
    ax.set_yticks(ys, [r["label"] + marks.get(i, "") for i, r in enumerate(rows)], fontsize=7)
    ax.set_xlabel(comparison.criterion.label)
    ax.grid(alpha=0.3, axis="x")


def leader_marks(comparison: Any) -> dict[int, str]:
    """" *" for the winner, " =" for tied leaders."""
    marks = {i: " =" for i in comparison.tied}
    if comparison.winner is not None:
        marks[comparison.winner] = " *"
    return marks


def draw_comparison(comparison: Any, path: Any) -> Any:
    """Write the comparison's figure to ``path``."""
    from ..results.plots import plt

    n = len(comparison.series)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(4.2, 0.28 * n + 2)), gridspec_kw={"width_ratios": [1.6, 1]})
    plot_curves(comparison.series, comparison.metric, comparison.x, left, comparison.target, leader_marks(comparison), comparison.logx)
    left.set_title(f"{METRIC_LABELS.get(comparison.metric, comparison.metric)} vs {X_LABELS[comparison.x]} "
                   "(mean, 95 % band over seeds)", fontsize=10)
    plot_bars(comparison, right)
    if comparison.winner is not None:
        title = "winner: " + comparison.rows[comparison.winner]["label"]
    else:
        title = "tied: " + " = ".join(comparison.rows[i]["label"] for i in comparison.tied) if comparison.tied else "no winner"
    right.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
