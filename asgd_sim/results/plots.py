"""PNG plots of a run folder's contents (matplotlib, headless).

The staleness histogram draws the geometric law of THEORY.md C2 only where it holds (async, every
worker's compute exponential with one mean: `geometric_reference`); the throughput is a moving
window over the updates (and over the gradients where they differ); timeline rows name the worker's
group (from the trace's metadata).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from ..scenario.config import Scenario  # noqa: E402
from ..scenario.distributions import Exponential  # noqa: E402
from ..trace import APPLIED, CANCELLED, Trace  # noqa: E402

__all__ = ["plot_staleness", "plot_worker_timeline", "plot_throughput", "plot_metrics", "write_timing_plots", "geometric_reference",
           "throughput_curve"]


def geometric_reference(scenario: Scenario | None) -> int | None:
    """M when the staleness of async SGD with M workers follows Geometric(1/M) (THEORY.md C2):
    every worker's compute time exponential with one mean, no slowdowns or pipelines; else None."""
    if scenario is None or scenario.algorithm.kind != "async" or scenario.num_workers < 2:
        return None
    groups = scenario.workers
    means = {g.compute.mean for g in groups if isinstance(g.compute, Exponential)}
    plain = all(isinstance(g.compute, Exponential) and not g.slowdowns and g.pipeline is None for g in groups) and not scenario.racks
    return scenario.num_workers if plain and len(means) == 1 else None


def _bars(ax: plt.Axes, left: np.ndarray, right: np.ndarray, heights: np.ndarray, colour: str, label: str) -> None:
    """Bars as one collection of rectangles: ``ax.bar`` adds a patch per bar, which cost most of
    a histogram of ~100 bars."""
    boxes = np.stack([np.stack([left, np.zeros_like(heights)], 1), np.stack([left, heights], 1), np.stack([right, heights], 1),
                      np.stack([right, np.zeros_like(heights)], 1)], 1)
    ax.add_collection(PolyCollection(boxes, facecolors=colour, edgecolors="none", label=label))
    ax.set_xlim(min(0.0, float(left.min())) - 0.02 * (right.max() - left.min()), float(right.max()) * 1.02 + 0.5)
    ax.set_ylim(0, float(heights.max()) * 1.05)


def plot_staleness(trace: Trace, path: Path, workers: int | None = None) -> None:
    """Histogram of the staleness of applied gradients; with ``workers`` (M, see
    `geometric_reference`) the Geometric(1/M) law of exponential compute for reference."""
    stale = trace.staleness[trace.fate == APPLIED]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if stale.size:
        top = int(np.quantile(stale, 0.999)) + 1
        width = -(-(top + 1) // 100)  # at most ~100 bars: thousands of workers means thousands of values
        starts = np.arange(0, top + 1, width)
        counts = np.bincount(np.minimum(stale, top) // width, minlength=len(starts))[: len(starts)] / stale.size
        left = starts - (0 if width > 1 else 0.45)  # bars from each bin's start; one-value bins centred on it
        _bars(ax, left, left + 0.9 * width, counts, "#4c72b0", "simulated")
        if workers and workers > 1:  # (only where the law holds: `geometric_reference`)
            q = 1 - 1 / workers  # P(start <= tau < start + width) under Geometric(1/M)
            x = starts + (width / 2 if width > 1 else 0)
            ax.plot(x, q ** starts - q ** (starts + width), "k.--", lw=1, ms=3, label=f"Geometric(1/M), M={workers} (exponential compute, THEORY.md C2)")
        ax.axvline(stale.mean(), color="#dd8452", lw=1.5, label=f"mean {stale.mean():.2f}")
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel("staleness (updates)")
    ax.set_ylabel("fraction of gradients")
    ax.set_title("Staleness of applied gradients")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_worker_timeline(trace: Trace, path: Path, max_workers: int = 32, window: float | None = None) -> None:
    """Gantt chart: compute, communication and lock wait per worker over the first part of the run."""
    t = trace.times
    n_workers = min(int(trace.worker.max()) + 1 if trace.num_gradients else 0, max_workers)
    fig, ax = plt.subplots(figsize=(8, 0.3 * n_workers + 1.5))
    if trace.num_gradients:
        # Show about the first 30 iterations per worker: enough to see the pattern, few enough to read.
        end = window or float(np.nanquantile(t["t_compute_end"], min(1.0, 30 * trace.meta.get("workers", n_workers) / trace.num_gradients)))
        colours = {"compute": "#4c72b0", "cancelled": "#c44e52", "network": "#8c8c8c", "lock wait": "#dd8452", "apply": "#55a868"}
        mask = (trace.worker < n_workers) & (t["t_pull"] <= end)
        gids = np.flatnonzero(mask)
        compute = np.where(trace.fate[gids] == CANCELLED, "cancelled", "compute")
        phases = (("network", "t_read", "t_compute_start"), (None, "t_compute_start", "t_compute_end"),
                  ("network", "t_compute_end", "t_arrive"), ("lock wait", "t_arrive", "t_lock"), ("apply", "t_lock", "t_applied"))
        # One collection of rectangles per colour (a call per worker and colour, or a patch per
        # span, dominated timing-only runs at M = 1,000).
        spans: dict[str, list[np.ndarray]] = {}
        for name, a_col, b_col in phases:
            a, b = t[a_col][gids], t[b_col][gids]
            ok = np.isfinite(a) & np.isfinite(b) & (b > a)
            y = trace.worker[gids][ok].astype(float)
            boxes = np.stack([np.stack([a[ok], y - 0.4], 1), np.stack([a[ok], y + 0.4], 1),
                              np.stack([b[ok], y + 0.4], 1), np.stack([b[ok], y - 0.4], 1)], 1)
            labels = compute[ok] if name is None else np.full(int(ok.sum()), name)
            for label in np.unique(labels):
                spans.setdefault(str(label), []).append(boxes[labels == label])
        for label, boxes in spans.items():
            ax.add_collection(PolyCollection(np.concatenate(boxes), facecolors=colours[label], edgecolors="none"))
        ax.set_ylim(-0.6, n_workers - 0.4)
        ax.set_xlim(0, end)
        groups = trace.worker_groups()
        if any(groups):  # each row says its worker's group
            ax.set_yticks(range(n_workers), [f"{w} {groups[w]}" if w < len(groups) else str(w) for w in range(n_workers)],
                          fontsize=7 if n_workers > 16 else 8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        fig.legend(handles, list(colours), ncol=5, fontsize=7, frameon=False, loc="lower center")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("worker")
    ax.set_title("Worker timeline")
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))  # (room for the legend below: 0.3 inch)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_curve(trace: Trace, window: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(time, updates/s, gradients/s, window): rates over a moving window of ``window`` logical
    updates (default: about 1/40 of the run, at least 10), at each window's end."""
    per_shard = [np.sort(trace.u_applied[trace.u_shard == s]) for s in range(trace.shards)]
    n = min((len(t) for t in per_shard), default=0)
    if n < 3:
        return np.zeros(0), np.zeros(0), np.zeros(0), 0
    times = np.max([t[:n] for t in per_shard], axis=0)  # logical update u lands when its slowest shard does
    w = min(max(10, n // 40) if window is None else max(1, window), n - 1)
    start, end = times[:-w], times[w:]
    with np.errstate(divide="ignore", invalid="ignore"):
        updates = np.where(end > start, w / (end - start), np.nan)
        done = np.sort(trace.times["t_applied"][trace.fate == APPLIED])
        grads = np.searchsorted(done, end, side="right") - np.searchsorted(done, start, side="right")
        gradients = np.where(end > start, grads / (end - start), np.nan)
    return end, updates, gradients, w


def plot_throughput(trace: Trace, path: Path, window: int | None = None) -> None:
    """Server updates (and gradients, where they differ) per simulated second, smoothed over a
    moving window of updates (`throughput_curve`)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    t, updates, gradients, w = throughput_curve(trace, window)
    # Drawn at <= ~2,000 points: the window spans 1/40 of the run, so the curve has no detail finer
    # than that, and a line of 100k points cost more than the rest of the plot.
    step = max(1, t.size // 2000)
    t, updates, gradients = t[::step], updates[::step], gradients[::step]
    if t.size:
        ax.plot(t, updates, color="#4c72b0", label="updates / s")
        if not np.allclose(gradients, updates, equal_nan=True):
            ax.plot(t, gradients, color="#dd8452", label="gradients / s")
            ax.legend(frameon=False, fontsize=8)
        ax.set_ylim(bottom=0)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("per simulated second")
    ax.set_title("Server throughput" + (f" (moving window of {w} updates)" if w else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(metrics: dict[str, np.ndarray], path: Path, x: str, y: str, title: str, ylabel: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs, ys = np.asarray(metrics[x]), np.asarray(metrics[y], dtype=float)
    ok = np.isfinite(ys)
    ax.plot(xs[ok], ys[ok], color="#4c72b0", marker=".", ms=3)
    if y == "train_loss" and ok.any() and np.all(ys[ok] > 0):
        ax.set_yscale("log")
    ax.set_xlabel({"sim_time": "simulated time (s)", "update": "server updates"}.get(x, x))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_timing_plots(trace: Trace, folder: Path, scenario: Scenario | None = None) -> list[str]:
    """staleness.png, timeline.png and throughput.png (the geometric staleness law only where the
    ``scenario`` makes it hold)."""
    files = {"staleness.png": lambda p: plot_staleness(trace, p, geometric_reference(scenario)),
             "timeline.png": lambda p: plot_worker_timeline(trace, p),
             "throughput.png": lambda p: plot_throughput(trace, p)}
    for name, draw in files.items():
        draw(folder / name)
    return list(files)
