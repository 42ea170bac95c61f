"""Turn what a real run recorded into the simulator's `Result` and run folder.

The real server keeps references to its parameters at every ``run.eval_every`` logical updates
(immutable arrays: no copy, no pause); they are evaluated after the run, so evaluation never
disturbs the timing. Everything else (summary, plots, timeline) is a function of the trace, as
for a simulated run. The folder also holds ``final_params.npy``, the real server's final
parameters (flat), which a replay of the trace must reproduce.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..config import Scenario
from ..trace import APPLIED, Trace

__all__ = ["finish_real_run", "write_real_result"]


def finish_real_run(scenario: Scenario, layout: Any, trace: Trace, snapshots: list[tuple[int, float, tuple, int]],
                    final_rows: tuple, stopped: str, sim_time: float, wall: float, backend: dict[str, Any]) -> Any:
    from ..engine import TimingResult
    from ..runner import timing_summary
    from ..simulate import Result
    from ..summary import busy_from_trace, learning_summary

    problem, P, unravel = layout.problem, layout.P, layout.unravel
    evaluate = jax.jit(lambda flat: problem.evaluate(unravel(flat[:P])))
    metrics: dict[str, list[float]] = {"update": [], "sim_time": [], "train_loss": [], "test_accuracy": [], "staleness_mean": []}
    for update, t, rows, n_rows in snapshots:
        values = evaluate(jnp.asarray(layout.flat(rows)))
        members = trace.member_gid[: trace.member_offsets[n_rows]] if n_rows else np.zeros(0, np.int64)
        members = np.unique(members)
        stale = trace.staleness[members][trace.fate[members] == APPLIED] if members.size else np.zeros(0)
        metrics["update"].append(int(update))
        metrics["sim_time"].append(float(t))
        metrics["train_loss"].append(float(values["train_loss"]))
        metrics["test_accuracy"].append(float(values["test_accuracy"]))
        metrics["staleness_mean"].append(float(stale.mean()) if stale.size else 0.0)
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    busy = busy_from_trace(trace, sim_time, scenario.num_workers)
    updates = int(arrays["update"][-1]) if len(arrays["update"]) else 0
    timing = TimingResult(trace=trace, stopped=stopped, sim_time=sim_time, wall_time_s=wall, updates=updates, busy=busy)
    summary = timing_summary(scenario, timing)
    final_loss = metrics["train_loss"][-1]
    summary.update(learning_summary(arrays, scenario.run.target_accuracy))
    summary.update({
        "diverged": not (math.isfinite(final_loss) and final_loss <= scenario.run.max_loss),
        "diverged_at_update": None,
        "param_count": P,
        "backend": backend,
    })
    params = layout.pytree(final_rows)
    return Result(scenario=scenario, trace=trace, metrics=arrays, summary=summary, params=params)


def write_real_result(result: Any, out: Path, layout: Any, final_rows: tuple) -> None:
    from ..simulate import write_result

    write_result(result, out)
    np.save(out / "final_params.npy", layout.flat(final_rows))
