"""The one run path: a scenario in, a `Result` (and, given a folder, the run folder) out.

- `simulate`: the SimPy timing engine and the JAX numerics engine together; the timing runs ahead
  in windows and the numerics fold each window of the trace into parameters (docs/DESIGN.md).
- `replay`: the numerics again on the trace saved in a run folder (the same schedule, another
  update rule).
- `run_scenario`: what the CLI, sweeps and fidelity call: timing only, a full simulation, or a
  real backend, with an optional progress bar, written to ``out`` when given.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .algorithms import make_policy
from .errors import ScenarioError
from .results.folder import write_run
from .results.result import Result
from .results.summary import busy_from_trace, learning_summary, run_summary
from .scenario.config import Scenario
from .timing.closed_form import make_timing_engine
from .timing.engine import fewer_collections
from .trace import Trace, TraceBuilder, trace_meta

__all__ = ["simulate", "replay", "run_scenario", "run_timing", "progress_bar", "small_pages", "REPLAY_KEYS", "Progress"]

# What a replay may change: the schedule (timing) is the saved one, so only numerics keys.
REPLAY_KEYS = ("optimizer.", "run.eval_every", "run.target_accuracy", "run.max_loss", "run.window", "run.batch_cap",
               "algorithm.elastic_alpha")

Progress = Callable[[int, float], None]  # (logical updates so far, simulated or real seconds)
Callback = Callable[[dict[str, float]], Any]  # one evaluation row: {"update": int, "sim_time": s, "train_loss": ..., ...}


def simulate(scenario: Scenario | str | Path, overrides: tuple[str, ...] | list[str] = (), *,
             progress: Progress | None = None, callbacks: Sequence[Callback] = (), problem: Any = None) -> Result:
    """Simulate a scenario end to end: real JAX gradients at the simulated stale parameters.

    ``scenario`` is a Scenario or a TOML path; ``overrides`` are ``key=value`` strings as on the
    command line. A diverging run is a result (``result.diverged``), not an exception.
    ``callbacks`` are called with every evaluation row as it is taken (the rows of metrics.csv, as
    dicts: TensorBoard, W&B, MLflow, a live plot). ``problem`` is a model object with ``init(key)``,
    ``loss(params, batch[, key=..., state=...])`` and optionally ``accuracy(params, batch)``
    (`asgd_sim.numerics.user_problem`), trained on the scenario's ``[data]``; it replaces
    ``[model]`` (whose name then only labels the run).
    """
    from .numerics.engine import NumericsEngine
    from .numerics.problems import problem_from_object
    from .numerics.stream import Metrics, drive

    sc = _load(scenario, overrides)
    started = time.perf_counter()
    with fewer_collections(freeze=True), small_pages():
        numerics = NumericsEngine(sc, problem_from_object(problem, sc, sc.num_workers) if problem is not None else None)
        engine = make_timing_engine(sc, param_bytes=sc.model.param_bytes or numerics.problem.param_bytes)
        metrics = Metrics(callbacks)
        stopped = drive(engine, numerics, metrics, progress)
        result = _finish(sc, engine, numerics, metrics, stopped, time.perf_counter() - started)
    if problem is not None:  # (the scenario's [model] did not run: say what did; replay it with the same object)
        result.summary["problem"] = numerics.problem.name
    return result


def replay(run_dir: str | Path, overrides: tuple[str, ...] | list[str] = (), *, progress: Progress | None = None,
           callbacks: Sequence[Callback] = (), problem: Any = None) -> Result:
    """Re-run the numerics on the trace saved in ``run_dir`` (same schedule, e.g. another rule);
    ``callbacks`` and ``problem`` (the object a run from `simulate(..., problem=...)` trained) as
    in `simulate`."""
    from .numerics.engine import NumericsEngine
    from .numerics.stream import Metrics, drive

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
    from .numerics.problems import problem_from_object

    numerics = NumericsEngine(sc, problem_from_object(problem, sc, sc.num_workers) if problem is not None else None)
    schedule = _SavedSchedule(saved)
    metrics = Metrics(callbacks)
    stopped = drive(schedule, numerics, metrics, progress)
    result = _finish(sc, schedule, numerics, metrics, stopped, time.perf_counter() - started)
    from .scenario.files import scenario_changes

    # What was replayed, and what changed from the scenario that ran (summary.json keeps it).
    result.summary["replay"] = {"of": str(run_dir), "updates": schedule.updates,
                                "changed": scenario_changes(_load(run_dir / "scenario.toml", ()), sc)}
    return result


@contextmanager
def small_pages() -> Iterator[None]:
    """numpy's big arrays on ordinary pages while a run allocates them, restored after.

    numpy advises the kernel to back arrays of 4 MB and more with transparent huge pages
    (madvise MADV_HUGEPAGE). Where the kernel then compacts memory on the page fault (THP
    ``defrag = madvise``, the usual default), a fault can stall: on this project's machine, the
    Ringmaster paper's runs (n = 6,174; traces of 3 million rows, 42 MB of parameter history)
    spent 0.5-1.3 s per run in it (benchmarks/matrix.py --only paper: 9.0 s -> 6.5 s for the three
    methods). A simulation writes each big array once, front to back, where huge pages gain little.
    """
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # type: ignore[attr-defined]
    except ImportError:  # (numpy < 2, or a build without it: nothing to change)
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # type: ignore[attr-defined,no-redef]
        except ImportError:
            yield
            return
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


def run_timing(scenario: Scenario, progress: Progress | None = None) -> Result:
    """Timing only (no JAX): the schedule and its summary; ``metrics`` is empty."""
    started = time.perf_counter()
    with fewer_collections(freeze=True), small_pages():
        timing = make_timing_engine(scenario).run(progress)
        wall = time.perf_counter() - started
        summary = run_summary(scenario, timing.trace, sim_time=timing.sim_time, stopped=timing.stopped, wall_time_s=wall,
                              busy=timing.busy, deadlock=timing.deadlock)
    return Result(scenario=scenario, trace=timing.trace, metrics={}, summary=summary)


def run_scenario(scenario: Scenario, out: str | Path | None = None, *, timing_only: bool = False, backend: str = "sim",
                 show_progress: bool = False, callbacks: Sequence[Callback] = (), **backend_options: Any) -> Result:
    """Run ``scenario`` (simulated, timing only, or on a real backend) and write ``out`` if given.

    ``callbacks`` get every evaluation row: live in a simulation; after the run for a real
    backend, whose evaluations are taken on its saved parameters at the end. A timing-only run
    has no evaluations. ``backend_options`` go to the real backend (`asgd_sim.backends.run_backend`).
    """
    if callbacks and timing_only:
        raise ScenarioError("--timing-only", "a timing-only run takes no evaluations, so there is nothing to log; drop one of them")
    make_policy(scenario)  # a bad user algorithm fails here, before any work (one line, exit 2)
    update, close = progress_bar(scenario.run.until_updates or math.inf, "upd", show_progress)
    try:
        if backend != "sim":
            from .backends import run_backend

            result = run_backend(backend, scenario, out, progress=update, **backend_options)
            for row in result.metrics_frame.drop(columns="throughput").to_dict("records") if callbacks else ():
                for callback in callbacks:
                    callback({**row, "update": int(row["update"])})
        else:
            result = run_timing(scenario, update) if timing_only else simulate(scenario, progress=update, callbacks=callbacks)
    finally:
        close()
    if out is not None:
        write_run(result, out)
    return result


def progress_bar(total: float, unit: str, enabled: bool) -> tuple[Progress | None, Callable[[], None]]:
    """A tqdm bar over updates, shown only on a terminal (never in CI logs or pipes)."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total if total != math.inf else None, unit=unit, dynamic_ncols=True, leave=False)

    def update(done: int, sim_time: float) -> None:
        bar.n = done
        bar.set_postfix_str(f"t={sim_time:.3g}s", refresh=False)
        bar.refresh()

    return update, bar.close


class _SavedSchedule:
    """Stands in for the timing engine when replaying a saved trace: everything already happened."""

    def __init__(self, trace: Trace) -> None:
        self.trace = TraceBuilder.from_trace(trace)
        # (a run stopped by its numerics, at its target or a divergence, saved its trace while the
        # timing was still going: replayed, the schedule just ends there)
        self.stopped = str(trace.meta.get("stopped") or "end_of_schedule")
        self.env = SimpleNamespace(now=float(trace.meta.get("sim_time", np.nanmax(trace.u_applied) if trace.num_update_rows else 0.0)))
        self.updates = int(trace.u_version.max()) if trace.num_update_rows else 0

    def step_until(self, updates: float = math.inf, progress: Any = None) -> bool:
        return False


def _load(scenario: Scenario | str | Path, overrides: tuple[str, ...] | list[str]) -> Scenario:
    from .scenario.files import load_scenario, scenario_from_dict, scenario_to_dict

    if isinstance(scenario, Scenario):
        return scenario_from_dict(scenario_to_dict(scenario), overrides, name=scenario.name) if overrides else scenario
    return load_scenario(scenario, overrides)


def _finish(scenario: Scenario, schedule: Any, numerics: Any, metrics: Any, stopped: str, wall: float) -> Result:
    rows = numerics.row
    meta = trace_meta(scenario, getattr(schedule, "stopped", ""), schedule.env.now)
    # (the run is over: the trace takes the builder's buffers rather than a copy of them)
    trace = schedule.freeze(meta, copy=False) if hasattr(schedule, "freeze") else schedule.trace.freeze(meta, copy=False)
    if stopped in ("target_accuracy", "diverged"):  # the run ends at its last applied update
        trace = trace.truncated(rows)
        sim_time = float(trace.u_applied[rows - 1]) if rows else 0.0
    else:
        sim_time = float(schedule.env.now)
    summary = run_summary(scenario, trace, sim_time=sim_time, stopped=stopped, wall_time_s=wall,
                          busy=busy_from_trace(trace, sim_time, scenario.num_workers), deadlock=getattr(schedule, "deadlock", []))
    arrays = metrics.as_arrays()
    # (exact unless the fold again did not confirm the crossing, e.g. rounding at the threshold:
    # then the evaluation that saw the target stands)
    summary.update(learning_summary(arrays, scenario.run.target_accuracy, diverged=stopped == "diverged",
                                    exact=stopped == "target_accuracy" and metrics.search.get("found", True)))
    if metrics.search:
        summary["target_search"] = dict(metrics.search)
    summary.update({
        "diverged": stopped == "diverged",
        "diverged_at_update": numerics.diverged_at if stopped == "diverged" else None,
        "param_count": numerics.P,
        "compilations": numerics.traces,
        "waves": numerics.waves,
        "gradients_computed": numerics.computed,
    })
    return Result(scenario=scenario, trace=trace, metrics=arrays, summary=summary, params=numerics.current_params())
