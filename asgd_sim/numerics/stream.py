"""The numerics engine as a streaming consumer of a schedule: evaluations, targets, divergence.

A schedule is anything that grows a trace and can be advanced: the SimPy timing engine (which
runs ahead by ``run.window`` updates) or a saved trace being replayed (everything already
happened). `drive` folds the schedule's trace into parameters wave by wave, without waiting for
the device, which is synchronised only at evaluations (every ``run.eval_every`` logical updates).

The target accuracy is checked at evaluations, but the run stops where it was reached, not at
the evaluation that saw it: `locate_crossing` folds the trace again from update 0 (the fold is
deterministic: the same trace gives the same parameters) to the previous evaluation, then one
update at a time with an evaluation after each, to the first update at the target. The cost is
one more fold of the run up to the previous evaluation plus at most ``run.eval_every``
evaluations, paid once, by runs that reach their target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ..scenario.config import METRICS
from ..trace import TraceBuilder
from .engine import NumericsEngine

__all__ = ["Schedule", "Metrics", "drive", "locate_crossing"]


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

    def __init__(self, callbacks: Sequence[Callable[[dict[str, float]], Any]] = ()) -> None:
        self.columns: dict[str, list[float]] = {name: [] for name in self.COLUMNS}
        # Called with each evaluation row once it is final (`emit`): TensorBoard, W&B, a live plot.
        self.callbacks = list(callbacks)
        # Where the target was located between evaluations (`locate_crossing`): the two
        # evaluations it fell between, the evaluations it took and their wall time. Not a column.
        self.search: dict[str, Any] = {}

    @property
    def update(self) -> list[float]:
        return self.columns["update"]

    def append(self, update: int, sim_time: float, values: dict[str, float], staleness_mean: float) -> None:
        self.columns["update"].append(update)
        self.columns["sim_time"].append(sim_time)
        for name in METRICS:
            self.columns[name].append(values[name])
        self.columns["staleness_mean"].append(staleness_mean)

    def pop(self) -> None:
        """Forget the last evaluation (every column)."""
        for values in self.columns.values():
            values.pop()

    def last(self, name: str) -> float:
        return self.columns[name][-1]

    def emit(self) -> None:
        """Hand the last row to every callback: ``{"update": int, "sim_time": float, ...}``."""
        if self.callbacks:
            row = {name: values[-1] for name, values in self.columns.items()}
            row["update"] = int(row["update"])
            for callback in self.callbacks:
                callback(dict(row))

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
    elif _record(numerics, metrics, 0.0):  # a target already met at update 0: the run stops there
        metrics.emit()
        return "target_accuracy"
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
        if _record(numerics, metrics, _now(numerics, tr)):
            metrics.emit()  # (a row that reached the target was not emitted yet)
        return "diverged"
    if _record(numerics, metrics, _now(numerics, tr)):
        _stop_at_crossing(numerics, metrics, tr)
        return "target_accuracy"
    if not metrics.last("train_loss") <= numerics.scenario.run.max_loss:  # NaN, Inf or blow-up
        numerics.diverged_at = numerics.logical_updates()
        return "diverged"
    return ""


def _now(numerics: NumericsEngine, tr: TraceBuilder) -> float:
    """The simulated time of the last update folded in (0 before any)."""
    return float(tr.u_applied[numerics.row - 1]) if numerics.row else 0.0


def locate_crossing(numerics: NumericsEngine, tr: TraceBuilder, before: int, after: int,
                    reached: Callable[[dict[str, float]], bool]) -> tuple[int, dict[str, float]] | None:
    """The first logical update in (``before``, ``after``] whose evaluation is ``reached``.

    Folds ``tr`` again from update 0 (`NumericsEngine.restart`) to ``before`` as a run does,
    then one logical update per device call with an evaluation after each. Returns (update,
    evaluation) and leaves ``numerics`` there, or None (``numerics`` at ``after``) when no update
    up to ``after`` is reached: rounding, a fold cut into other waves differing in the last bit,
    can move a value sitting exactly at a threshold.
    """
    numerics.restart()
    eval_every = numerics.scenario.run.eval_every
    while numerics.logical_updates() < before and numerics.pending_rows(tr):
        numerics.run_call(tr, eval_every, before)
    while numerics.logical_updates() < after and numerics.pending_rows(tr):
        numerics.run_call(tr, 1, after)
        values = numerics.evaluate()
        if reached(values):
            return numerics.logical_updates(), values
    return None


def _stop_at_crossing(numerics: NumericsEngine, metrics: Metrics, tr: TraceBuilder) -> None:
    """The evaluation just recorded reached the target accuracy: end the run at the first update
    since the previous evaluation that reached it (its evaluation replaces the one recorded)."""
    if len(metrics.update) < 2 or metrics.update[-1] - metrics.update[-2] <= 1:
        metrics.emit()
        return  # nothing in between
    started = time.perf_counter()
    target = numerics.scenario.run.target_accuracy
    before, after = metrics.update[-2], metrics.update[-1]
    found = locate_crossing(numerics, tr, before, after, lambda values: values["test_accuracy"] >= target)
    if found is not None:
        metrics.pop()
        _record(numerics, metrics, _now(numerics, tr), values=found[1])
    metrics.search = {"between": [before, after], "evaluations": numerics.logical_updates() - before,
                      "wall_s": round(time.perf_counter() - started, 4), "found": found is not None}
    numerics.flags.clear()  # (the fold again saw no divergence: the run did not diverge before `after`)
    metrics.emit()


def _record(numerics: NumericsEngine, metrics: Metrics, now: float, initial: jax.Array | None = None,
            values: dict[str, float] | None = None) -> bool:
    """Evaluate now (or the ``initial`` parameters, as update 0; or take the evaluation
    ``values`` made now) and record it; True when the target accuracy is reached.

    The row goes to the callbacks now unless it reached the target: the run then ends at the
    update where it did (`_stop_at_crossing`), whose row replaces this one and is emitted there."""
    values = values if values is not None else numerics.evaluate(initial)
    metrics.append(numerics.logical_updates() if initial is None else 0, now, values,
                   numerics.staleness_mean() if initial is None else 0.0)
    target = numerics.scenario.run.target_accuracy
    reached = target is not None and values["test_accuracy"] >= target
    if not reached:
        metrics.emit()
    return reached
