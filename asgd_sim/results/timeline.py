"""Chrome / Perfetto timeline of a trace (open ``timeline.json`` in ui.perfetto.dev or chrome://tracing).

One track per worker (pull, compute, push, wait for lock, apply; named with the worker's group) and
one per shard (lock holds),
in the Trace Event Format's complete ("X") events, timestamps in microseconds of simulated time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..trace import CANCELLED, DROPPED, Trace

__all__ = ["timeline_events", "write_timeline"]

_US = 1e6
WORKERS_PID, SERVER_PID = 1, 2


def _span(name: str, pid: int, tid: int, start: float, end: float, args: dict[str, Any] | None = None) -> dict[str, Any] | None:
    if math.isnan(start) or math.isnan(end) or end < start:
        return None
    event = {"name": name, "ph": "X", "pid": pid, "tid": tid, "ts": start * _US, "dur": (end - start) * _US}
    if args:
        event["args"] = args
    return event


def timeline_events(trace: Trace, max_gradients: int = 50_000) -> list[dict[str, Any]]:
    """Trace events for the first ``max_gradients`` gradients and the updates in that span."""
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": WORKERS_PID, "args": {"name": "workers"}},
        {"name": "process_name", "ph": "M", "pid": SERVER_PID, "args": {"name": "server shards"}},
    ]
    workers = int(trace.worker.max()) + 1 if trace.num_gradients else 0
    groups = trace.worker_groups()
    for wid in range(workers):
        group = groups[wid] if wid < len(groups) else ""
        events.append({"name": "thread_name", "ph": "M", "pid": WORKERS_PID, "tid": wid,
                       "args": {"name": f"worker {wid}" + (f" ({group})" if group else "")}})
    for shard in range(trace.shards):
        events.append({"name": "thread_name", "ph": "M", "pid": SERVER_PID, "tid": shard, "args": {"name": f"shard {shard}"}})
    n = min(trace.num_gradients, max_gradients)
    t = trace.times
    for gid in range(n):
        wid = int(trace.worker[gid])
        fate = int(trace.fate[gid])
        args = {"gid": gid, "k": int(trace.k[gid]), "read_version": trace.read_version[gid].tolist(),
                "staleness": int(trace.staleness[gid])}
        compute_name = "compute (cancelled)" if fate == CANCELLED else "compute"
        for span in (
            _span("pull", WORKERS_PID, wid, t["t_pull"][gid], t["t_compute_start"][gid]) if trace.local_step[gid] == 0 else None,
            _span(compute_name, WORKERS_PID, wid, t["t_compute_start"][gid], t["t_compute_end"][gid], args),
            _span("push", WORKERS_PID, wid, t["t_compute_end"][gid], t["t_arrive"][gid]),
            _span("lock wait", WORKERS_PID, wid, t["t_arrive"][gid], t["t_lock"][gid]),
            _span("dropped" if fate == DROPPED else "apply", WORKERS_PID, wid, t["t_lock"][gid], t["t_applied"][gid]),
        ):
            if span is not None:
                events.append(span)
    horizon = float(np.nanmax(t["t_compute_end"][:n])) if n else 0.0
    for row in range(trace.num_update_rows):
        if trace.u_lock[row] > horizon:
            break
        gids, _ = trace.members(row)
        span = _span(f"v{int(trace.u_version[row])}", SERVER_PID, int(trace.u_shard[row]), float(trace.u_lock[row]),
                     float(trace.u_applied[row]), {"gradients": gids.tolist()[:64]})
        if span is not None:
            events.append(span)
    return events


def write_timeline(trace: Trace, path: str | Path, max_gradients: int = 50_000) -> None:
    events = timeline_events(trace, max_gradients)
    truncated = trace.num_gradients > max_gradients
    with open(path, "w") as handle:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms",
                   "otherData": {"truncated": truncated, "gradients_shown": min(trace.num_gradients, max_gradients)}}, handle)
