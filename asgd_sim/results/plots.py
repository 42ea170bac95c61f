"""PNG plots of a run folder's contents (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..trace import APPLIED, CANCELLED, Trace  # noqa: E402

__all__ = ["plot_staleness", "plot_worker_timeline", "plot_throughput", "plot_metrics", "write_timing_plots"]


def plot_staleness(trace: Trace, path: Path, workers: int | None = None) -> None:
    """Histogram of the staleness of applied gradients, with the geometric law for reference."""
    stale = trace.staleness[trace.fate == APPLIED]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if stale.size:
        top = int(np.quantile(stale, 0.999)) + 1
        width = -(-(top + 1) // 100)  # at most ~100 bars: thousands of workers means thousands of values
        starts = np.arange(0, top + 1, width)
        counts = np.bincount(np.minimum(stale, top) // width, minlength=len(starts))[: len(starts)] / stale.size
        ax.bar(starts, counts, width=0.9 * width, align="edge" if width > 1 else "center", color="#4c72b0", label="simulated")
        if workers and workers > 1:
            q = 1 - 1 / workers  # P(start <= tau < start + width) under Geometric(1/M)
            x = starts + (width / 2 if width > 1 else 0)
            ax.plot(x, q ** starts - q ** (starts + width), "k.--", lw=1, ms=3, label=f"Geometric(1/M), M={workers} (exponential compute)")
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
        # One broken_barh call per (worker, colour): per-span calls dominated timing-only runs.
        spans: dict[tuple[int, str], list[tuple[float, float]]] = {}
        for name, a_col, b_col in phases:
            a, b = t[a_col][gids], t[b_col][gids]
            ok = np.isfinite(a) & np.isfinite(b) & (b > a)
            labels = compute[ok] if name is None else np.full(int(ok.sum()), name)
            for wid, label, x0, x1 in zip(trace.worker[gids][ok], labels, a[ok], b[ok]):
                spans.setdefault((int(wid), str(label)), []).append((float(x0), float(x1 - x0)))
        for (wid, label), ranges in spans.items():
            ax.broken_barh(ranges, (wid - 0.4, 0.8), color=colours[label])
        ax.set_xlim(0, end)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        ax.legend(handles, list(colours), ncol=5, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("worker")
    ax.set_title("Worker timeline")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(trace: Trace, path: Path, bins: int = 50) -> None:
    """Server updates per simulated second over the run."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    times = trace.u_applied[trace.u_shard == 0]
    if times.size > 1:
        counts, edges = np.histogram(times, bins=bins)
        ax.plot((edges[:-1] + edges[1:]) / 2, counts / np.diff(edges), color="#4c72b0")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("updates / s")
    ax.set_title("Server throughput")
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


def write_timing_plots(trace: Trace, folder: Path, workers: int) -> list[str]:
    files = {"staleness.png": lambda p: plot_staleness(trace, p, workers),
             "timeline.png": lambda p: plot_worker_timeline(trace, p),
             "throughput.png": lambda p: plot_throughput(trace, p)}
    for name, draw in files.items():
        draw(folder / name)
    return list(files)
