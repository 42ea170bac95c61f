"""The run folder: every file a run leaves, written from its `Result` (simulated or real).

A run folder holds ``scenario.toml`` (resolved: every default filled in), ``gradients.parquet``
and ``updates.parquet`` (the trace), ``timeline.json`` (Chrome/Perfetto), ``summary.json``, PNG
plots and, with numerics, ``metrics.csv``; a real run adds ``final_params.npy``. analysis/
scripts and `asgd_sim.results.load` read these files only.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..scenario.config import Scenario
from ..scenario.files import dump_scenario
from ..trace import Trace
from .columns import METRIC_COLUMNS
from .plots import plot_metrics, write_timing_plots
from .timeline import write_timeline

__all__ = ["write_run", "start_run_folder", "default_out_dir", "write_json", "write_metrics_csv", "RunOutput"]


class RunOutput(Protocol):
    """What a run folder is written from: a `results.result.Result` (which calls `write_run` in
    its ``save``, so this module names only the fields it reads)."""

    scenario: Scenario
    trace: Trace
    metrics: dict[str, np.ndarray]
    summary: dict[str, Any]
    flat_params: np.ndarray | None


def default_out_dir(scenario: Scenario, root: str | Path = "results") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{scenario.name}-{stamp}"


def start_run_folder(scenario: Scenario, out: Path) -> None:
    """Create ``out`` with the resolved scenario in it (a real run writes it first: a killed run
    can then be resumed from the folder)."""
    out.mkdir(parents=True, exist_ok=True)
    dump_scenario(scenario, out / "scenario.toml")


def write_run(result: RunOutput, out: str | Path) -> None:
    """Write the whole run folder of ``result``."""
    out = Path(out)
    start_run_folder(result.scenario, out)
    result.trace.save(out)
    write_timeline(result.trace, out / "timeline.json")
    write_timing_plots(result.trace, out, result.scenario)
    write_json(out / "summary.json", result.summary)
    if result.metrics:
        write_metrics_csv(result.metrics, out / "metrics.csv")
        _write_learning_plots(result.metrics, out)
    if result.flat_params is not None:
        np.save(out / "final_params.npy", result.flat_params)


def _write_learning_plots(metrics: dict[str, np.ndarray], out: Path) -> None:
    for y, label in (("train_loss", "train loss"), ("test_accuracy", "test accuracy")):
        if np.isfinite(metrics[y]).any():
            for x, suffix in (("sim_time", "time"), ("update", "updates")):
                plot_metrics(metrics, out / f"{y.split('_')[-1]}_vs_{suffix}.png", x, y,
                             f"{label} vs {'simulated time' if x == 'sim_time' else 'server updates'}", label)


def write_metrics_csv(metrics: dict[str, np.ndarray], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(METRIC_COLUMNS)
        for row in zip(*(metrics[name] for name in METRIC_COLUMNS)):
            writer.writerow([int(row[0]), *(f"{float(v):.9g}" for v in row[1:])])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
