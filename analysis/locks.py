"""Lock contention: throughput and lock wait vs apply time, global lock vs per-shard vs lock-free.

Reads the timing-only sweep of scenarios/lock_contention.toml:

    asgd-sim sweep scenarios/lock_contention.toml --timing-only --grid server.lock=global,shard,none \\
        --grid server.apply_time=0.0002,0.0005,0.001,0.002,0.004 --seeds 3 --out results/locks
    .venv/bin/python analysis/locks.py results/locks --out docs/gallery/locks.png

Left: server updates per simulated second; the dotted line is what the workers alone could
deliver (no server cost) and the dashed one the global lock's capacity, 1 / (shards x apply time):
an update holds the one mutex while it applies every shard. Right: mean wait for the lock.
"""

from __future__ import annotations


import numpy as np

from asgd_sim.studies.compare import mean_ci
from asgd_sim.results.plots import plt

from _common import arguments, save, successful_runs  # noqa: E402  (analysis/ is the script's folder)


def main() -> None:
    args = arguments(__doc__, "locks.png")

    runs, scenario = successful_runs(args.sweep)
    shards = int(scenario["server"]["shards"])
    workers = sum(int(g["count"]) for g in scenario["workers"])
    compute = float(scenario["workers"][0]["compute"]["mean"])

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (lock, group) in enumerate(runs.groupby("server.lock", sort=False)):
        xs = sorted(group["server.apply_time"].unique())
        for ax, column, scale in ((left, "updates_per_s", 1.0), (right, "lock_wait_mean", 1e3)):
            stats = [mean_ci(group[group["server.apply_time"] == x][column]) for x in xs]
            ax.errorbar(np.array(xs) * 1e3, [m * scale for m, _ in stats], yerr=[np.nan_to_num(h) * scale for _, h in stats],
                        marker="o", capsize=3, color=f"C{i}", label={"none": "lock-free", "shard": "per-shard", "global": "global"}[lock])
    grid = np.geomspace(min(runs["server.apply_time"]), max(runs["server.apply_time"]), 50)
    left.plot(grid * 1e3, 1 / (shards * grid), "k--", lw=0.8, label=f"global lock capacity 1/({shards} x apply)")
    left.axhline(workers / compute, color="k", ls=":", lw=0.8, label=f"{workers} workers / compute time")
    left.set_ylabel("server updates / simulated s")
    right.set_ylabel("mean lock wait (ms)")
    ticks = sorted(runs["server.apply_time"].unique())
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks([t * 1e3 for t in ticks], [f"{t * 1e3:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("apply time per shard (ms)")
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    left.legend(frameon=False, fontsize=8)
    right.set_yscale("symlog", linthresh=0.01)  # lock-free waits are exactly 0
    right.set_ylim(bottom=0)
    right.legend(frameon=False, fontsize=8)
    fig.suptitle(f"{workers} workers, {shards} shards: when does the lock become the bottleneck? (mean, 95 % interval)", fontsize=10)
    save(fig, args.out)


if __name__ == "__main__":
    main()
