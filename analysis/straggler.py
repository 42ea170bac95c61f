"""Time to 90 % accuracy vs straggler slowdown: sync vs async vs backup workers.

Reads the sweep of scenarios/straggler.toml (its header has the command):

    asgd-sim sweep scenarios/straggler.toml --grid 'workers[1].compute.mean=0.05,0.1,0.2,0.4' \\
        --variant async:algorithm.kind=async --variant sync:algorithm.kind=sync \\
        --variant 'backup:algorithm.kind=sync;algorithm.backup=1' --seeds 3 --out results/straggler
    .venv/bin/python analysis/straggler.py results/straggler --out docs/gallery/straggler.png

Left: simulated time until test accuracy first reaches the target (mean and 95 % interval over
seeds) against how many times slower the straggler is than the other workers. Right: gradients
computed per simulated second (what each algorithm gets out of the cluster).
"""

from __future__ import annotations


import numpy as np

import asgd_sim
from asgd_sim.studies.compare import mean_ci
from asgd_sim.results.plots import plt

from _common import arguments, save, successful_runs  # noqa: E402  (analysis/ is the script's folder)

KEY = "workers[1].compute.mean"  # the straggler's mean compute time


def time_to_target(curves, target: float):
    """Per run: simulated time when test accuracy first reached ``target`` (NaN if never)."""
    out = {}
    for run, curve in curves.groupby("run"):
        hit = curve.index[curve["test_accuracy"] >= target]
        out[run] = float(curve.loc[hit[0], "sim_time"]) if len(hit) else np.nan
    return out


def main() -> None:
    args = arguments(__doc__, "straggler.png", target=True)

    runs, scenario = successful_runs(args.sweep)
    fast = float(scenario["workers"][0]["compute"]["mean"])
    target = args.target or scenario["run"].get("target_accuracy") or 0.9
    curves = asgd_sim.load_sweep(args.sweep, table="metrics")
    reached = time_to_target(curves, target)
    runs = runs.assign(to_target=[reached.get(r, np.nan) for r in runs["run"]], slowdown=runs[KEY] / fast)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (variant, group) in enumerate(runs.groupby("variant", sort=False)):
        xs = sorted(group["slowdown"].unique())
        for ax, column in ((left, "to_target"), (right, "gradients_per_s")):
            stats = [mean_ci(group[group["slowdown"] == x][column]) for x in xs]
            mean = np.array([m for m, _ in stats])
            half = np.nan_to_num(np.array([h for _, h in stats]))
            ax.errorbar(xs, mean, yerr=half, marker="o", capsize=3, color=f"C{i}", label=variant)
    left.set_ylabel(f"simulated time to {target:.0%} accuracy (s)")
    right.set_ylabel("gradients / simulated s")
    for ax in (left, right):
        ax.set_xlabel("straggler slowdown (x slower than the other 7 workers)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    left.legend(frameon=False)
    seeds = runs.groupby("point").size().min()
    fig.suptitle(f"One straggler in 8 workers: sync vs async vs one backup worker (mean, 95 % interval, {seeds} seeds)", fontsize=10)
    save(fig, args.out)


if __name__ == "__main__":
    main()
