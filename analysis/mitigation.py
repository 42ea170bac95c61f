"""Staleness mitigation compared: test accuracy vs simulated time per remedy, bands over seeds.

Reads the sweep of scenarios/staleness_mitigation.toml (its header has the command):

    asgd-sim sweep scenarios/staleness_mitigation.toml --seeds 3 --out results/mitigation \\
        --variant none:optimizer.staleness_rule=none --variant inverse:optimizer.staleness_rule=inverse \\
        --variant adaptive:optimizer.staleness_rule=adaptive --variant dc-asgd:optimizer.dc_lambda=0.5 \\
        --variant drop-stale:algorithm.drop_staleness_above=20
    .venv/bin/python analysis/mitigation.py results/mitigation --out docs/gallery/mitigation.png

Left: mean test accuracy over seeds with its 95 % band. Right: final accuracy per remedy.
"""

from __future__ import annotations


import numpy as np

import asgd_sim
from asgd_sim.studies.compare import band, mean_ci
from asgd_sim.results.plots import plt

from _common import arguments, save, successful_runs  # noqa: E402  (analysis/ is the script's folder)


def main() -> None:
    args = arguments(__doc__, "mitigation.png")

    runs, _ = successful_runs(args.sweep)
    curves = asgd_sim.load_sweep(args.sweep, table="metrics")
    workers = int(runs["workers"].iloc[0])
    stale = runs["staleness_mean"].mean()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    variants = list(dict.fromkeys(runs["variant"]))
    for i, variant in enumerate(variants):
        mine = curves[curves["variant"] == variant]
        b = band([c for _, c in mine.groupby("run")], "sim_time", "test_accuracy")
        left.plot(b["x"], b["mean"], color=f"C{i}", label=variant)
        left.fill_between(b["x"], np.maximum(b["lo"], 0), np.minimum(b["hi"], 1), color=f"C{i}", alpha=0.18, lw=0)
        mean, half = mean_ci(runs[runs["variant"] == variant]["final_accuracy"])
        right.barh(len(variants) - 1 - i, mean, xerr=np.nan_to_num(half), color=f"C{i}", capsize=3)
    left.set_xlabel("simulated time (s)")
    left.set_ylabel("test accuracy")
    left.grid(alpha=0.3)
    left.legend(frameon=False, fontsize=8)
    right.set_yticks(range(len(variants)), variants[::-1])
    right.set_xlabel("final test accuracy")
    right.set_xlim(0, 1)
    right.grid(alpha=0.3, axis="x")
    seeds = runs.groupby("point").size().min()
    fig.suptitle(f"{workers} async workers, mean staleness {stale:.0f}: which remedy recovers accuracy? (95 % band, {seeds} seeds)", fontsize=10)
    save(fig, args.out)


if __name__ == "__main__":
    main()
