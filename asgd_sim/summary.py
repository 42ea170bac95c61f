"""Summary statistics of a trace: throughput, staleness, lock wait, utilisation.

All of these are functions of the trace alone (STYLE.md 5), so they are the same for a simulated
run and a real one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .trace import APPLIED, CANCELLED, DROPPED, PENDING, Trace

__all__ = ["summarize_trace", "staleness_histogram"]


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
    updates = int(trace.u_version[trace.u_shard == 0].max()) if trace.num_update_rows else 0
    horizon = sim_time if sim_time > 0 else float("nan")
    # Lock wait per update (request to lock), and per gradient the whole wait at the server
    # (arrival to lock: for sync kinds it includes the barrier).
    lock_waits = trace.u_lock - trace.u_request
    server_waits = (trace.t_lock - trace.t_arrive)[applied]
    workers = int(trace.meta.get("workers", int(trace.worker.max()) + 1 if trace.num_gradients else 0))
    per_worker = []
    for wid in range(workers):
        mine = trace.worker == wid
        mine_applied = mine & applied
        compute = (trace.t_compute_end - trace.t_compute_start)[mine]
        busy_time = busy[wid] if busy is not None else float(np.nansum(compute))
        group = worker_groups[wid] if worker_groups is not None else 0
        per_worker.append({
            "worker": wid,
            "group": group_names[group] if group_names is not None else str(group),
            "gradients": int(mine_applied.sum()),
            "staleness_mean": _mean(trace.staleness[mine_applied]),
            "busy_fraction": round(min(busy_time, sim_time) / horizon, 6) if sim_time > 0 else 0.0,
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
        "staleness": {
            "mean": _mean(stale),
            "p50": _quantile(stale, 0.5),
            "p95": _quantile(stale, 0.95),
            "max": int(stale.max()) if stale.size else 0,
            "hist": staleness_histogram(stale),
        },
        "lock_wait_mean": _mean(lock_waits),
        "lock_wait_p95": _quantile(lock_waits, 0.95),
        "server_wait_mean": _mean(server_waits),
        "per_worker": per_worker,
    }


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else 0.0


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if values.size else 0.0
