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
    busy = [float(v) for v in np.bincount(trace.worker, weights=np.nan_to_num(np.minimum(trace.t_compute_end, sim_time) - trace.t_compute_start),
                                            minlength=scenario.num_workers)]
    updates = int(arrays["update"][-1]) if len(arrays["update"]) else 0
    timing = TimingResult(trace=trace, stopped=stopped, sim_time=sim_time, wall_time_s=wall, updates=updates, busy=busy)
    summary = timing_summary(scenario, timing)
    final_loss, final_acc = metrics["train_loss"][-1], metrics["test_accuracy"][-1]
    target = scenario.run.target_accuracy
    reached = np.flatnonzero(arrays["test_accuracy"] >= target) if target is not None else np.zeros(0, int)
    summary.update({
        "final_loss": final_loss if math.isfinite(final_loss) else None,
        "final_accuracy": final_acc if math.isfinite(final_acc) else None,
        "time_to_target": float(arrays["sim_time"][reached[0]]) if reached.size else None,
        "updates_to_target": int(arrays["update"][reached[0]]) if reached.size else None,
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
