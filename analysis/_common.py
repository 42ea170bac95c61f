"""What every analysis script shares: its command line, the sweep's successful runs, saving a figure."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import asgd_sim


def arguments(doc: str, figure: str, target: bool = False, metric: str | None = None) -> argparse.Namespace:
    """``SWEEP [--out PNG]`` (and ``--target ACC``, ``--metric NAME``), described by the script's docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the sweep folder (--out of asgd-sim sweep)")
    if target:
        parser.add_argument("--target", type=float, default=None, help="test accuracy (default: the scenario's run.target_accuracy)")
    if metric is not None:
        parser.add_argument("--metric", default=metric, help=f"the metrics.csv column to draw (default: {metric})")
    parser.add_argument("--out", type=Path, default=Path("docs/gallery") / figure)
    return parser.parse_args()


def successful_runs(sweep: Path) -> tuple[Any, dict[str, Any]]:
    """The sweep's runs that finished (a pandas frame) and its resolved base scenario."""
    runs = asgd_sim.load_sweep(sweep)
    return runs[runs["status"] == "ok"], tomllib.loads(runs.attrs["sweep"]["base_scenario"])


def save(fig: Any, out: Path) -> None:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")
