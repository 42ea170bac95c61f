"""Turn what a real run recorded into a `Result`, like a simulated run's.

The real server keeps references to its parameters at every ``run.eval_every`` logical updates
(immutable arrays: no copy, no pause); they are evaluated after the run, so evaluation never
disturbs the timing. Everything else (summary, plots, timeline) is a function of the trace, as
for a simulated run. ``flat_params`` is the real server's final parameter vector, which a replay
of the trace must reproduce (written to ``final_params.npy``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..results.result import METRIC_COLUMNS, Result
from ..results.summary import busy_from_trace, learning_summary, run_summary
from ..scenario.config import METRICS, Scenario
from ..trace import APPLIED, Trace

__all__ = ["finish_real_run"]


def finish_real_run(scenario: Scenario, layout: Any, trace: Trace, snapshots: list[tuple[int, float, tuple, int]],
                    final_rows: tuple, stopped: str, sim_time: float, wall: float, backend: dict[str, Any]) -> Result:
    problem, P, unravel = layout.problem, layout.P, layout.unravel
    evaluate = jax.jit(lambda flat: problem.evaluate(unravel(flat[:P])))
    metrics: dict[str, list[float]] = {name: [] for name in METRIC_COLUMNS}
    for update, t, rows, n_rows in snapshots:
        values = evaluate(jnp.asarray(layout.flat(rows)))
        members = trace.member_gid[: trace.member_offsets[n_rows]] if n_rows else np.zeros(0, np.int64)
        members = np.unique(members)
        stale = trace.staleness[members][trace.fate[members] == APPLIED] if members.size else np.zeros(0)
        metrics["update"].append(int(update))
        metrics["sim_time"].append(float(t))
        for name in METRICS:
            metrics[name].append(float(values[name]))
        metrics["staleness_mean"].append(float(stale.mean()) if stale.size else 0.0)
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    summary = run_summary(scenario, trace, sim_time=sim_time, stopped=stopped, wall_time_s=wall,
                          busy=busy_from_trace(trace, sim_time, scenario.num_workers))
    final_loss = metrics["train_loss"][-1]
    summary.update(learning_summary(arrays, scenario.run.target_accuracy))
    summary.update({
        "diverged": not (math.isfinite(final_loss) and final_loss <= scenario.run.max_loss),
        "diverged_at_update": None,
        "param_count": P,
        "backend": backend,
    })
    return Result(scenario=scenario, trace=trace, metrics=arrays, summary=summary, params=layout.pytree(final_rows),
                  flat_params=layout.flat(final_rows))
