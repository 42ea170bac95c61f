"""Summary statistics of a trace: throughput, staleness, lock wait, utilisation.

All of these are functions of the trace alone (docs/STYLE.md 5), so they are the same for a simulated
run and a real one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..scenario.config import Scenario
from ..trace import APPLIED, CANCELLED, DROPPED, PENDING, Trace

__all__ = ["run_summary", "summarize_trace", "staleness_histogram", "busy_from_trace", "learning_summary", "push_lock_waits",
           "stalled", "steady_rates", "STALL_WINDOW", "STALL_LOSS", "STALL_ACCURACY"]

# A run has stalled when, over the last STALL_WINDOW of its updates, its train loss never fell
# below STALL_LOSS x its value at update 0 and its test accuracy (where the problem has one) never
# rose STALL_ACCURACY above its value at update 0 (a random initialisation's: chance).
STALL_WINDOW, STALL_LOSS, STALL_ACCURACY = 0.5, 0.9, 0.05


def run_summary(scenario: Scenario, trace: Trace, *, sim_time: float, stopped: str, wall_time_s: float,
                busy: list[float] | None = None, deadlock: list[str] | None = None) -> dict[str, Any]:
    """The ``summary.json`` of a run: the trace's figures plus what the run was and why it stopped.

    ``busy`` is each worker's compute time (from the trace when not given).
    """
    groups = [g for g, group in enumerate(scenario.workers) for _ in range(group.count)]
    summary = summarize_trace(trace, sim_time, [g.name for g in scenario.workers], groups, busy)
    summary.update({"scenario": scenario.name, "algorithm": scenario.algorithm.kind, "workers": scenario.num_workers,
                    "stopped": stopped, "wall_time_s": round(wall_time_s, 4)})
    if deadlock:
        summary["deadlock"] = list(deadlock)
    return summary


def staleness_histogram(staleness: np.ndarray, max_bins: int = 100) -> dict[str, list]:
    """Counts per staleness value (one bin per integer up to ``max_bins``, wider bins beyond)."""
    if staleness.size == 0:
        return {"edges": [0, 1], "counts": [0]}
    top = int(staleness.max()) + 1
    width = max(1, -(-top // max_bins))
    edges = np.arange(0, top + width, width)
    counts, _ = np.histogram(staleness, bins=edges)
    return {"edges": edges.astype(int).tolist(), "counts": counts.astype(int).tolist()}


def summarize_trace(trace: Trace, sim_time: float, group_names: list[str] | None = None,
                    worker_groups: list[int] | None = None, busy: list[float] | None = None) -> dict[str, Any]:
    """The ``summary.json`` fields computed from a trace."""
    applied = trace.fate == APPLIED
    stale = trace.staleness[applied]
    # Logical updates: the slowest shard's version (a faster shard may be one update ahead).
    updates = min(int(trace.u_version[trace.u_shard == s].max(initial=0)) for s in range(trace.shards))
    horizon = sim_time if sim_time > 0 else float("nan")
    # Lock wait per push (request to holding every lock it needs) and per shard row (request to
    # that row's lock), and per gradient the whole wait at the server (arrival to lock: for sync
    # kinds it includes the barrier).
    lock_waits = push_lock_waits(trace)
    row_waits = trace.u_lock - trace.u_request
    server_waits = (trace.t_lock - trace.t_arrive)[applied]
    workers = int(trace.meta.get("workers", int(trace.worker.max()) + 1 if trace.num_gradients else 0))
    # Per-worker figures by bincount: one pass over the trace, not one per worker.
    counts = np.bincount(trace.worker[applied], minlength=workers)
    stale_sums = np.bincount(trace.worker[applied], weights=stale, minlength=workers)
    if busy is None:
        busy = busy_from_trace(trace, sim_time, workers) if sim_time > 0 else [0.0] * workers
    per_worker = []
    for wid in range(workers):
        group = worker_groups[wid] if worker_groups is not None else 0
        per_worker.append({
            "worker": wid,
            "group": group_names[group] if group_names is not None else str(group),
            "gradients": int(counts[wid]),
            "staleness_mean": float(stale_sums[wid] / counts[wid]) if counts[wid] else 0.0,
            "busy_fraction": round(min(busy[wid], sim_time) / horizon, 6) if sim_time > 0 else 0.0,
        })
    return {
        "updates": updates,
        "gradients": int(applied.sum()),
        "gradients_total": trace.num_gradients,
        "dropped": int((trace.fate == DROPPED).sum()),
        "cancelled": int((trace.fate == CANCELLED).sum()),
        "in_flight": int((trace.fate == PENDING).sum()),
        "sim_time": float(sim_time),
        "updates_per_s": updates / horizon if sim_time > 0 else 0.0,
        "gradients_per_s": int(applied.sum()) / horizon if sim_time > 0 else 0.0,
        **steady_rates(trace, sim_time),
        "staleness": {
            "mean": _mean(stale),
            "p50": _quantile(stale, 0.5),
            "p95": _quantile(stale, 0.95),
            "max": int(stale.max()) if stale.size else 0,
            "hist": staleness_histogram(stale),
        },
        "lock_wait_mean": _mean(lock_waits),
        "lock_wait_p95": _quantile(lock_waits, 0.95),
        "lock_wait_row_mean": _mean(row_waits),
        "server_wait_mean": _mean(server_waits),
        "per_worker": per_worker,
    }


def steady_rates(trace: Trace, sim_time: float) -> dict[str, float]:
    """Updates and gradients per simulated second over the second half of the run (sim_time / 2
    to sim_time): the steady state, without the start-up (first pulls, a pipeline filling, the
    first round), which weighs most in short runs such as those stopped at a target."""
    if sim_time <= 0:
        return {"steady_updates_per_s": 0.0, "steady_gradients_per_s": 0.0}
    half = sim_time / 2

    def logical(t: float) -> int:  # logical updates applied by time t: the slowest shard's count
        return min(int(np.count_nonzero(trace.u_applied[trace.u_shard == s] <= t)) for s in range(trace.shards))

    done = trace.times["t_applied"][trace.fate == APPLIED]
    grads = int(np.count_nonzero((done > half) & (done <= sim_time)))
    return {"steady_updates_per_s": (logical(sim_time) - logical(half)) / half, "steady_gradients_per_s": grads / half}


def push_lock_waits(trace: Trace) -> np.ndarray:
    """Per push (one server request: a push, or a round closing), the time from the request to
    holding every lock it needs.

    A push becomes one update row per shard. Under per-shard locks (``shard``, ``rw``) it needs
    every shard's lock: its wait ends when its last row gets its lock. Under ``global`` the S rows
    take the one lock in turn, one behind the other: the push holds the lock it needs from its
    first row on, and its later rows wait only for their own siblings, which is not contention.
    Lock-free rows never wait; atomic rows all lock at once. A trace without push numbers (written
    before they existed) gives the per-row waits.
    """
    push, request, lock = trace.u_push, trace.u_request, trace.u_lock
    if push.size == 0 or (push < 0).any():
        return lock - request
    order = np.argsort(push, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(push[order]) != 0])
    locked = np.minimum if trace.meta.get("lock") == "global" else np.maximum
    return locked.reduceat(lock[order], starts) - np.minimum.reduceat(request[order], starts)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else 0.0


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if values.size else 0.0


def busy_from_trace(trace: Trace, sim_time: float, workers: int) -> list[float]:
    """Each worker's compute time up to ``sim_time``, from the trace's compute spans."""
    spans = np.nan_to_num(np.minimum(trace.t_compute_end, sim_time) - trace.t_compute_start)
    return [float(v) for v in np.bincount(trace.worker, weights=spans, minlength=workers)]


def stalled(metrics: dict[str, np.ndarray]) -> bool:
    """No progress beyond the initial loss or chance accuracy over the last half of the run
    (`STALL_WINDOW`, `STALL_LOSS`, `STALL_ACCURACY`): a run stuck at chance, or back there."""
    update = np.asarray(metrics["update"], float)
    loss, acc = np.asarray(metrics["train_loss"], float), np.asarray(metrics["test_accuracy"], float)
    if update.size < 2 or update[0] != 0 or update[-1] <= 0 or not np.isfinite(loss[0]) or loss[0] <= 0:
        return False  # no evaluation at update 0 to measure progress from, or nothing ran
    window = update >= (1 - STALL_WINDOW) * update[-1]
    progress = np.any(loss[window] < STALL_LOSS * loss[0])
    if np.isfinite(acc[0]):
        progress = progress or bool(np.any(acc[window] > acc[0] + STALL_ACCURACY))
    return not progress


def learning_summary(metrics: dict[str, np.ndarray], target: float | None, *, diverged: bool = False,
                     exact: bool = False) -> dict[str, Any]:
    """The summary fields of a learning curve: final values, the first evaluation at the target
    and whether the run stalled (`stalled`).

    ``exact``: the evaluation at the target was located to the update where it was crossed (a
    simulated run that stopped at its target, or a real run located by a replay of its trace);
    otherwise ``time_to_target`` is the first evaluation at it, up to ``run.eval_every`` late.
    """
    final_loss, final_acc = float(metrics["train_loss"][-1]), float(metrics["test_accuracy"][-1])
    reached = np.flatnonzero(metrics["test_accuracy"] >= target) if target is not None else np.zeros(0, int)
    return {
        "final_loss": final_loss if np.isfinite(final_loss) else None,
        "final_accuracy": final_acc if np.isfinite(final_acc) else None,
        "time_to_target": float(metrics["sim_time"][reached[0]]) if reached.size else None,
        "updates_to_target": int(metrics["update"][reached[0]]) if reached.size else None,
        "time_to_target_exact": bool(exact and reached.size),
        "stalled": not diverged and not reached.size and stalled(metrics),
    }
