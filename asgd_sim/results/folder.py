"""The run folder: every file a run leaves, written from its `Result` (simulated or real).

A run folder holds ``scenario.toml`` (resolved: every default filled in), ``gradients.parquet``
and ``updates.parquet`` (the trace), ``timeline.json`` (Chrome/Perfetto), ``summary.json``, PNG
plots and, with numerics, ``metrics.csv``; a real run adds ``final_params.npy``. analysis/
scripts and `asgd_sim.results.load` read these files only.
"""

from __future__ import annotations

import csv
import json
import time
from concurrent.futures import ThreadPoolExecutor
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


def write_run(result: RunOutput, out: str | Path) -> dict[str, float]:
    """Write the whole run folder of ``result``; returns the seconds each part took (``trace``:
    the Parquet files, ``timeline``, ``plots``, ``other``: scenario, summary, metrics, parameters).

    The Parquet files and the timeline are written on a second thread while the plots are drawn:
    both spend their time in Arrow kernels, which release the GIL, so on two cores writing a
    folder takes about as long as its plots (the files are the same either way).
    """
    out = Path(out)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    start_run_folder(result.scenario, out)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-folder") as pool:
        files = pool.submit(_write_trace_files, result, out)
        begun = time.perf_counter()
        write_timing_plots(result.trace, out, result.scenario)
        if result.metrics:
            _write_learning_plots(result.metrics, out)
        seconds["plots"] = time.perf_counter() - begun
        write_json(out / "summary.json", result.summary)
        if result.metrics:
            write_metrics_csv(result.metrics, out / "metrics.csv")
        if result.flat_params is not None:
            np.save(out / "final_params.npy", result.flat_params)
        seconds["other"] = time.perf_counter() - begun - seconds["plots"]
        seconds.update(files.result())
    seconds["total"] = time.perf_counter() - started
    return seconds


def _write_trace_files(result: RunOutput, out: Path) -> dict[str, float]:
    begun = time.perf_counter()
    result.trace.save(out)
    saved = time.perf_counter()
    write_timeline(result.trace, out / "timeline.json")
    return {"trace": saved - begun, "timeline": time.perf_counter() - saved}


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
