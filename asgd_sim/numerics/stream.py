"""The numerics engine as a streaming consumer of a schedule: evaluations, targets, divergence.

A schedule is anything that grows a trace and can be advanced: the SimPy timing engine (which
runs ahead by ``run.window`` updates) or a saved trace being replayed (everything already
happened). `drive` folds the schedule's trace into parameters wave by wave, without waiting for
the device, which is synchronised only at evaluations (every ``run.eval_every`` logical updates).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ..scenario.config import METRICS
from ..trace import TraceBuilder
from .engine import NumericsEngine

__all__ = ["Schedule", "Metrics", "drive"]


class Schedule(Protocol):
    """What `drive` needs of the thing that decides when updates happen."""

    trace: TraceBuilder
    stopped: str

    def step_until(self, updates: float = math.inf, progress: Callable[[int, float], None] | None = None) -> bool:
        """Advance until ``updates`` logical updates exist (or the run stops); False once stopped."""


class Metrics:
    """Evaluations over the run (the rows of metrics.csv): update, simulated time, every measure of
    `asgd_sim.scenario.config.METRICS`, and the mean staleness so far."""

    COLUMNS = ("update", "sim_time", *METRICS, "staleness_mean")

    def __init__(self) -> None:
        self.columns: dict[str, list[float]] = {name: [] for name in self.COLUMNS}

    @property
    def update(self) -> list[float]:
        return self.columns["update"]

    def append(self, update: int, sim_time: float, values: dict[str, float], staleness_mean: float) -> None:
        self.columns["update"].append(update)
        self.columns["sim_time"].append(sim_time)
        for name in METRICS:
            self.columns[name].append(values[name])
        self.columns["staleness_mean"].append(staleness_mean)

    def last(self, name: str) -> float:
        return self.columns[name][-1]

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(values) for name, values in self.columns.items()}


def drive(engine: Schedule, numerics: NumericsEngine, metrics: Metrics,
          progress: Callable[[int, float], None] | None = None) -> str:
    """Advance timing and numerics together; returns why the run ended.

    Timing runs ahead by ``run.window`` updates; the numerics follow wave by wave without
    waiting for the device, which is synchronised only at evaluations (every ``run.eval_every``
    logical updates). ``run.target_accuracy`` and divergence stop the run at that point.
    """
    sc = numerics.scenario
    tr = engine.trace
    eval_every, window = sc.run.eval_every, max(1, sc.run.window)
    limit = sc.run.until_updates if sc.run.until_updates is not None else math.inf
    initial = None
    if not metrics.update and numerics.row == 0 and sc.run.target_accuracy is None:
        # The metrics at update 0 are taken after the first call is dispatched, from a copy of
        # the starting parameters, so that the evaluation compiles alongside the first waves.
        initial = jnp.copy(numerics.params)
        numerics.compile_evaluation_in_background()
    else:  # (a target may already be met at update 0: then the run stops there)
        _record(numerics, metrics, 0.0)
    while True:
        running = engine.step_until(numerics.logical_updates() + window)
        while numerics.pending_rows(tr):
            numerics.run_call(tr, eval_every, limit)
            if initial is not None:
                _record(numerics, metrics, 0.0, initial)
                initial = None
            logical = numerics.logical_updates()
            if progress is not None:
                progress(logical, float(tr.u_applied[numerics.row - 1]))
            if numerics.check_now or (logical % eval_every == 0 and logical > metrics.update[-1]):
                stop = _evaluation(numerics, metrics, tr)
                if stop:
                    return stop
        if not running:
            if initial is not None:  # (no update at all)
                _record(numerics, metrics, 0.0, initial)
                initial = None
            if numerics.logical_updates() > metrics.update[-1] or numerics.flags:
                stop = _evaluation(numerics, metrics, tr)
                if stop:
                    return stop
            return engine.stopped


def _evaluation(numerics: NumericsEngine, metrics: Metrics, tr: TraceBuilder) -> str:
    """Check for divergence, evaluate and record; the reason to stop, or ''."""
    if numerics.diverged(tr):
        _record(numerics, metrics, float(tr.u_applied[numerics.row - 1]) if numerics.row else 0.0)
        return "diverged"
    if _record(numerics, metrics, float(tr.u_applied[numerics.row - 1]) if numerics.row else 0.0):
        return "target_accuracy"
    if not metrics.last("train_loss") <= numerics.scenario.run.max_loss:  # NaN, Inf or blow-up
        numerics.diverged_at = numerics.logical_updates()
        return "diverged"
    return ""


def _record(numerics: NumericsEngine, metrics: Metrics, now: float, initial: jax.Array | None = None) -> bool:
    """Evaluate now (or the ``initial`` parameters, as update 0); True when the target accuracy
    is reached."""
    values = numerics.evaluate(initial)
    metrics.append(numerics.logical_updates() if initial is None else 0, now, values,
                   numerics.staleness_mean() if initial is None else 0.0)
    target = numerics.scenario.run.target_accuracy
    return target is not None and values["test_accuracy"] >= target
