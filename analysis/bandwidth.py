"""Server bandwidth bottleneck: throughput vs server shards, with and without 4x compression.

Reads the timing-only sweep of scenarios/bandwidth.toml:

    asgd-sim sweep scenarios/bandwidth.toml --timing-only --grid server.shards=1,2,4,8,16 \\
        --grid network.compression=1.0,0.25 --seeds 3 --out results/bandwidth
    .venv/bin/python analysis/bandwidth.py results/bandwidth --out docs/gallery/bandwidth.png

Each shard has its own NIC, so S shards move S times the bytes per second. The dashed lines are
the NIC limit, S x server bandwidth / message bytes updates per second (a push in and a pull out,
one direction each), and the dotted ones what the workers alone allow (compute plus their own
link's transfers): the knee is where the two cross.
"""

from __future__ import annotations


import numpy as np

from asgd_sim.studies.compare import mean_ci
from asgd_sim.results.plots import plt

from _common import arguments, save, successful_runs  # noqa: E402  (analysis/ is the script's folder)


def main() -> None:
    args = arguments(__doc__, "bandwidth.png")

    runs, scenario = successful_runs(args.sweep)
    workers = sum(int(g["count"]) for g in scenario["workers"])
    compute = float(scenario["workers"][0]["compute"]["mean"])
    nic, link = float(scenario["network"]["server_bandwidth"]), float(scenario["network"]["bandwidth"])
    size = float(scenario["model"]["param_bytes"])

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (compression, group) in enumerate(sorted(runs.groupby("network.compression"), reverse=True)):
        xs = sorted(group["server.shards"].unique())
        stats = [mean_ci(group[group["server.shards"] == x]["updates_per_s"]) for x in xs]
        label = "no compression" if compression == 1 else f"compression {compression:g} ({1 / compression:g}x smaller messages)"
        ax.errorbar(xs, [m for m, _ in stats], yerr=[np.nan_to_num(h) for _, h in stats], marker="o", capsize=3, color=f"C{i}", label=label)
        message = size * compression
        ax.plot(xs, [s * nic / message for s in xs], "--", color=f"C{i}", lw=0.8)
        ax.axhline(workers / (compute + 2 * message / link), color=f"C{i}", ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("server shards (one NIC each)")
    ax.set_ylabel("server updates / simulated s")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title(f"{workers} workers, {size / 1e6:g} MB model: dashed = NIC limit, dotted = worker limit", fontsize=9)
    save(fig, args.out)


if __name__ == "__main__":
    main()
