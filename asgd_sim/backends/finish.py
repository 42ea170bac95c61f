"""Turn what a real run recorded into a `Result`, like a simulated run's.

The real server keeps references to its parameters at every ``run.eval_every`` logical updates
(immutable arrays: no copy, no pause); they are evaluated after the run, so evaluation never
disturbs the timing. Everything else (summary, plots, timeline) is a function of the trace, as
for a simulated run. ``flat_params`` is the real server's final parameter vector, which a replay
of the trace must reproduce (written to ``final_params.npy``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..results.result import METRIC_COLUMNS, Result
from ..results.summary import busy_from_trace, learning_summary, run_summary
from ..scenario.config import Scenario
from ..trace import APPLIED, Trace

__all__ = ["finish_real_run"]


def finish_real_run(scenario: Scenario, layout: Any, trace: Trace, snapshots: list[tuple[int, float, tuple, int]],
                    final_rows: tuple, stopped: str, sim_time: float, wall: float, backend: dict[str, Any]) -> Result:
    problem, P, unravel = layout.problem, layout.P, layout.unravel
    evaluate = jax.jit(lambda flat: problem.evaluate(unravel(flat[:P])))
    rows = [_metrics_row(trace, evaluate(jnp.asarray(layout.flat(snap_rows))), update, t, n_rows)
            for update, t, snap_rows, n_rows in snapshots]
    search = _locate_target(scenario, layout, trace, rows)
    arrays = {name: np.asarray([row[name] for row in rows]) for name in METRIC_COLUMNS}
    summary = run_summary(scenario, trace, sim_time=sim_time, stopped=stopped, wall_time_s=wall,
                          busy=busy_from_trace(trace, sim_time, scenario.num_workers))
    final_loss = float(arrays["train_loss"][-1])
    diverged = not (math.isfinite(final_loss) and final_loss <= scenario.run.max_loss)
    summary.update(learning_summary(arrays, scenario.run.target_accuracy, diverged=diverged, exact=search is not None))
    if search:
        summary["target_search"] = search
    summary.update({
        "diverged": diverged,
        "diverged_at_update": None,
        "param_count": P,
        "backend": backend,
    })
    return Result(scenario=scenario, trace=trace, metrics=arrays, summary=summary, params=layout.pytree(final_rows),
                  flat_params=layout.flat(final_rows))


def _metrics_row(trace: Trace, values: dict[str, Any], update: int, t: float, n_rows: int) -> dict[str, float]:
    """One row of metrics.csv: the evaluation at ``update`` (the first ``n_rows`` update rows)."""
    members = np.unique(trace.member_gid[: trace.member_offsets[n_rows]] if n_rows else np.zeros(0, np.int64))
    stale = trace.staleness[members][trace.fate[members] == APPLIED] if members.size else np.zeros(0)
    row = {name: float(values[name]) for name in METRIC_COLUMNS if name in values}
    row.update(update=int(update), sim_time=float(t), staleness_mean=float(stale.mean()) if stale.size else 0.0)
    return row


def _locate_target(scenario: Scenario, layout: Any, trace: Trace, rows: list[dict[str, float]]) -> dict[str, Any] | None:
    """Where the real run crossed ``run.target_accuracy`` between two evaluations, found by a
    replay of its trace (which reproduces the real parameters: docs/DESIGN.md); the evaluation
    there goes into ``rows``. None when the target was not reached or the replay does not
    confirm it (then ``time_to_target`` is the first evaluation at the target)."""
    target = scenario.run.target_accuracy
    hit = next((i for i, row in enumerate(rows) if target is not None and row["test_accuracy"] >= target), None)
    if hit is None:
        return None
    if hit == 0 or rows[hit]["update"] - rows[hit - 1]["update"] <= 1:
        return {}  # nothing in between: exact as it is
    from ..numerics.engine import NumericsEngine
    from ..numerics.stream import locate_crossing
    from ..trace import TraceBuilder

    started = time.perf_counter()
    numerics = NumericsEngine(scenario, layout.problem)
    tr = TraceBuilder.from_trace(trace)
    before, after = int(rows[hit - 1]["update"]), int(rows[hit]["update"])
    found = locate_crossing(numerics, tr, before, after, lambda values: values["test_accuracy"] >= target)
    if found is None:
        return None
    update, values = found
    rows.insert(hit, _metrics_row(trace, values, update, float(trace.u_applied[numerics.row - 1]), numerics.row))
    return {"between": [before, after], "evaluations": update - before, "wall_s": round(time.perf_counter() - started, 4),
            "found": True, "by": "replay"}
