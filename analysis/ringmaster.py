"""Ringmaster ASGD's Section G reproduced: |grad f|^2 against simulated time per method, bands over seeds.

Reads the sweep of scenarios/papers/ringmaster_quadratic.toml (its header has the command):

    asgd-sim sweep scenarios/papers/ringmaster_quadratic.toml --seeds 3 --out results/ringmaster \\
        --variant 'Ringmaster:algorithm.kind=ringmaster' --variant 'Rennala:...' ...
    .venv/bin/python analysis/ringmaster.py results/ringmaster --out docs/gallery/ringmaster.png

Left: |grad f(x)|^2 at the server's parameters (log scale), the mean of log10 over seeds with the
seeds' range as a band. Right: updates per second each method gets out of the 6,174 workers.
"""

from __future__ import annotations

import numpy as np

import asgd_sim
from asgd_sim.results.plots import plt

from _common import arguments, save, successful_runs  # noqa: E402  (analysis/ is the script's folder)


def log_band(curves: list, horizon: float, metric: str, points: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Time grid, and per time the mean, min and max over seeds of log10 of ``metric`` (each curve
    held at its last value after it ends)."""
    grid = np.linspace(0.0, horizon, points)
    logs = np.stack([np.interp(grid, c["sim_time"].to_numpy(float), np.log10(c[metric].to_numpy(float))) for c in curves])
    return grid, logs.mean(axis=0), logs.min(axis=0), logs.max(axis=0)


def main() -> None:
    args = arguments(__doc__, "ringmaster.png", metric="grad_norm_sq")
    runs, base = successful_runs(args.sweep)
    curves = asgd_sim.load_sweep(args.sweep, table="metrics")
    horizon = float(base["run"]["until_time"])
    variants = list(dict.fromkeys(runs["variant"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.8, 1]})
    for i, variant in enumerate(variants):
        mine = [c for _, c in curves[curves["variant"] == variant].groupby("run")]
        grid, mean, low, high = log_band(mine, horizon, args.metric)
        left.plot(grid, 10**mean, color=f"C{i}", label=variant)
        left.fill_between(grid, 10**low, 10**high, color=f"C{i}", alpha=0.2, lw=0)
        rates = runs[runs["variant"] == variant]["updates_per_s"]
        right.barh(len(variants) - 1 - i, rates.mean(), xerr=rates.max() - rates.mean(), color=f"C{i}", capsize=3)
    left.set_yscale("log")
    left.set_xlabel("simulated time (s)")
    left.set_ylabel(r"$\|\nabla f(x)\|^2$" if args.metric == "grad_norm_sq" else args.metric.replace("_", " "))
    left.grid(alpha=0.3, which="both")
    left.legend(frameon=False, fontsize=8)
    right.set_yticks(range(len(variants)), variants[::-1])
    right.set_xscale("log")
    right.set_xlabel("server updates per simulated second")
    right.grid(alpha=0.3, axis="x")
    seeds = runs.groupby("point").size().min()
    workers = int(base["workers"][0]["count"])
    problem = (f"Nesterov's worst case, d = {base['model']['dim']}" if base["model"]["name"] == "worst_case_quadratic"
               else f"{base['model']['name']} {base['model'].get('hidden', '')} on {base['data']['name']}")
    fig.suptitle(f"{problem}, n = {workers} workers taking 1 + sqrt(j) + |N(0, j + 1)| s ({seeds} seeds: mean of log10 and range)",
                 fontsize=10)
    save(fig, args.out)


if __name__ == "__main__":
    main()
