"""Run a scenario and write its results folder.

A run folder holds: ``scenario.toml`` (resolved: every default filled in), ``gradients.parquet``
and ``updates.parquet`` (the trace), ``timeline.json`` (Chrome/Perfetto), ``summary.json``,
PNG plots, and with numerics ``metrics.csv``. analysis/ scripts read these files only.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import Scenario
from .engine import TimingEngine, TimingResult
from .scenario import dump_scenario
from .summary import summarize_trace
from .timeline import write_timeline

__all__ = ["default_out_dir", "run_timing", "write_timing_outputs", "progress_bar"]


def default_out_dir(scenario: Scenario, root: str | Path = "results") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{scenario.name}-{stamp}"


def progress_bar(total: float, unit: str, enabled: bool) -> tuple[Callable[[int, float], None] | None, Callable[[], None]]:
    """A tqdm bar over updates, shown only on a terminal (never in CI logs or pipes)."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total if total != float("inf") else None, unit=unit, dynamic_ncols=True, leave=False)

    def update(done: int, sim_time: float) -> None:
        bar.n = done
        bar.set_postfix_str(f"t={sim_time:.3g}s", refresh=False)
        bar.refresh()

    return update, bar.close


def timing_summary(scenario: Scenario, result: TimingResult) -> dict[str, Any]:
    groups = [g for g, group in enumerate(scenario.workers) for _ in range(group.count)]
    summary = summarize_trace(result.trace, result.sim_time, [g.name for g in scenario.workers], groups, result.busy)
    summary.update({"scenario": scenario.name, "algorithm": scenario.algorithm.kind, "workers": scenario.num_workers,
                    "stopped": result.stopped, "wall_time_s": round(result.wall_time_s, 4)})
    if result.deadlock:
        summary["deadlock"] = result.deadlock
    return summary


def write_timing_outputs(scenario: Scenario, result: TimingResult, out: Path, summary: dict[str, Any]) -> None:
    from .plots import write_timing_plots

    out.mkdir(parents=True, exist_ok=True)
    dump_scenario(scenario, out / "scenario.toml")
    result.trace.save(out)
    write_timeline(result.trace, out / "timeline.json")
    write_timing_plots(result.trace, out, scenario.num_workers)
    write_json(out / "summary.json", summary)


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


def run_timing(scenario: Scenario, out: Path | None = None, show_progress: bool = False) -> tuple[TimingResult, dict[str, Any]]:
    """Timing only (no JAX): simulate, summarise and, given ``out``, write the run folder."""
    started = time.perf_counter()
    engine = TimingEngine(scenario)
    update, close = progress_bar(scenario.run.until_updates or float("inf"), "upd", show_progress)
    try:
        result = engine.run(update)
    finally:
        close()
    result.wall_time_s = time.perf_counter() - started
    summary = timing_summary(scenario, result)
    if out is not None:
        write_timing_outputs(scenario, result, out, summary)
    return result, summary
