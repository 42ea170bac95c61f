"""``simulate(scenario)``: timing and numerics together, and ``replay`` of a saved trace.

The timing engine runs ahead in windows; the numerics engine folds each window of the trace into
parameters and evaluates them every ``run.eval_every`` updates (DESIGN.md "Architecture").
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .config import Scenario
from .engine import TimingEngine
from .errors import ScenarioError
from .numerics import Metrics, NumericsEngine, drive
from .trace import Trace, TraceBuilder

__all__ = ["Result", "simulate", "replay", "run_simulation", "write_metrics_csv", "REPLAY_KEYS"]

# What a replay may change: the schedule (timing) is the saved one, so only numerics keys.
REPLAY_KEYS = ("optimizer.", "run.eval_every", "run.target_accuracy", "run.max_loss", "run.window", "run.batch_cap",
               "algorithm.elastic_alpha")


@dataclass
class Result:
    """A finished simulation: the trace, the learning curves, the summary and final parameters."""

    scenario: Scenario
    trace: Trace
    metrics: dict[str, np.ndarray]
    summary: dict[str, Any]
    params: Any

    @property
    def diverged(self) -> bool:
        return bool(self.summary["diverged"])


class _SavedSchedule:
    """Stands in for the timing engine when replaying a saved trace: everything already happened."""

    def __init__(self, trace: Trace) -> None:
        self.trace = TraceBuilder.from_trace(trace)
        self.stopped = str(trace.meta.get("stopped", "until_updates"))
        self.env = SimpleNamespace(now=float(trace.meta.get("sim_time", np.nanmax(trace.u_applied) if trace.num_update_rows else 0.0)))
        self.updates = int(trace.u_version.max()) if trace.num_update_rows else 0

    def step_until(self, updates: float = math.inf, progress: Any = None) -> bool:
        return False


def _load(scenario: Scenario | str | Path, overrides: tuple[str, ...] | list[str]) -> Scenario:
    if isinstance(scenario, Scenario):
        if overrides:
            from .scenario import scenario_from_dict, scenario_to_dict

            return scenario_from_dict(scenario_to_dict(scenario), overrides, name=scenario.name)
        return scenario
    from .scenario import load_scenario

    return load_scenario(scenario, overrides)


def _finish(scenario: Scenario, schedule: Any, numerics: NumericsEngine, metrics: Metrics, stopped: str, wall: float) -> Result:
    from .engine import TimingResult
    from .runner import timing_summary
    from .summary import busy_from_trace, learning_summary

    rows = numerics.row
    trace = schedule.trace.freeze(dict(trace_meta(schedule, scenario)))
    if stopped in ("target_accuracy", "diverged"):  # the run ends at its last applied update
        trace = trace.truncated(rows)
        sim_time = float(trace.u_applied[rows - 1]) if rows else 0.0
    else:
        sim_time = float(schedule.env.now)
    busy = busy_from_trace(trace, sim_time, scenario.num_workers)
    timing = TimingResult(trace=trace, stopped=stopped, sim_time=sim_time, wall_time_s=wall, updates=numerics.logical_updates(),
                          busy=busy, deadlock=list(getattr(schedule, "deadlock", [])))
    summary = timing_summary(scenario, timing)
    arrays = metrics.as_arrays()
    summary.update(learning_summary(arrays, scenario.run.target_accuracy))
    summary.update({
        "diverged": stopped == "diverged",
        "diverged_at_update": numerics.diverged_at if stopped == "diverged" else None,
        "param_count": numerics.P,
        "compilations": numerics.traces,
        "waves": numerics.waves,
        "gradients_computed": numerics.computed,
    })
    return Result(scenario=scenario, trace=trace, metrics=arrays, summary=summary, params=numerics.current_params())


def trace_meta(schedule: Any, scenario: Scenario) -> dict[str, Any]:
    return {"scenario": scenario.name, "kind": scenario.algorithm.kind, "workers": scenario.num_workers,
            "stopped": getattr(schedule, "stopped", ""), "sim_time": float(schedule.env.now)}


def simulate(scenario: Scenario | str | Path, overrides: tuple[str, ...] | list[str] = (), *,
             progress: Any = None) -> Result:
    """Simulate a scenario end to end: real JAX gradients at the simulated stale parameters.

    ``scenario`` is a Scenario or a TOML path; ``overrides`` are ``key=value`` strings as on the
    command line. A diverging run is a result (``result.diverged``), not an exception.
    """
    sc = _load(scenario, overrides)
    started = time.perf_counter()
    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=sc.model.param_bytes or numerics.problem.param_bytes)
    metrics = Metrics()
    stopped = drive(engine, numerics, metrics, progress)
    return _finish(sc, engine, numerics, metrics, stopped, time.perf_counter() - started)


def replay(run_dir: str | Path, overrides: tuple[str, ...] | list[str] = (), *, progress: Any = None) -> Result:
    """Re-run the numerics on the trace saved in ``run_dir`` (same schedule, e.g. another rule)."""
    run_dir = Path(run_dir)
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if not any(key == allowed or key.startswith(allowed) for allowed in REPLAY_KEYS if allowed.endswith(".")) and key not in REPLAY_KEYS:
            raise ScenarioError(key, f"cannot change in a replay: the schedule is the saved one; a replay may change {', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in REPLAY_KEYS)} (to change the cluster, use asgd-sim run)")
    if not (run_dir / "scenario.toml").is_file() or not (run_dir / "gradients.parquet").is_file():
        raise ScenarioError(str(run_dir), "is not a run folder: it needs scenario.toml, gradients.parquet and updates.parquet (written by asgd-sim run)")
    sc = _load(run_dir / "scenario.toml", overrides)
    saved = Trace.load(run_dir)
    started = time.perf_counter()
    numerics = NumericsEngine(sc)
    schedule = _SavedSchedule(saved)
    metrics = Metrics()
    stopped = drive(schedule, numerics, metrics, progress)  # type: ignore[arg-type]
    return _finish(sc, schedule, numerics, metrics, stopped, time.perf_counter() - started)


def write_metrics_csv(metrics: dict[str, np.ndarray], path: Path) -> None:
    names = ("update", "sim_time", "train_loss", "test_accuracy", "staleness_mean")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(metrics[name] for name in names)):
            writer.writerow([int(row[0]), *(f"{float(v):.9g}" for v in row[1:])])


def write_result(result: Result, out: Path) -> None:
    """The run folder of a full simulation (timing files plus metrics and learning curves)."""
    from .plots import plot_metrics
    from .runner import write_timing_outputs
    from .engine import TimingResult

    timing = TimingResult(trace=result.trace, stopped=result.summary["stopped"], sim_time=result.summary["sim_time"],
                          wall_time_s=result.summary["wall_time_s"], updates=result.summary["updates"], busy=[])
    write_timing_outputs(result.scenario, timing, out, result.summary)
    write_metrics_csv(result.metrics, out / "metrics.csv")
    for y, label in (("train_loss", "train loss"), ("test_accuracy", "test accuracy")):
        if np.isfinite(result.metrics[y]).any():
            for x, suffix in (("sim_time", "time"), ("update", "updates")):
                plot_metrics(result.metrics, out / f"{y.split('_')[-1]}_vs_{suffix}.png", x, y,
                             f"{label} vs {'simulated time' if x == 'sim_time' else 'server updates'}", label)


def run_simulation(scenario: Scenario, out: Path | None, show_progress: bool = False) -> tuple[Result, dict[str, Any]]:
    from .runner import progress_bar

    update, close = progress_bar(scenario.run.until_updates or float("inf"), "upd", show_progress)
    try:
        result = simulate(scenario, progress=update)
    finally:
        close()
    if out is not None:
        write_result(result, out)
    return result, result.summary

