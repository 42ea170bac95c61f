"""Chrome / Perfetto timeline of a trace (open ``timeline.json`` in ui.perfetto.dev or chrome://tracing).

Three processes of tracks, timestamps in microseconds of simulated time (nanosecond resolution):

- ``workers``: a track per worker (named with its group) holding what the worker itself does:
  ``pull`` (request to parameters in hand), ``compute`` (one gradient or local step; ``compute
  (cancelled)`` when the server cancelled it, cut where it was cancelled) and ``push`` (the
  push of a gradient, or of a local-SGD period's last step, until it reaches the server).
- ``at the server``: a track per worker for its pushes once they arrived: ``wait`` (arrival to
  the lock: queueing for the lock, or for the round to close) and ``apply`` or ``dropped``.
  A worker's next pull may start while its last push still waits (K-batch-async), so these
  phases have tracks of their own.
- ``server shards``: a track per shard with each update's lock hold (``v<version>``, its
  gradients in ``args``), the counter ``staleness`` (mean and max of each update's gradients)
  and the counter ``pushes waiting`` (pushes arrived and not yet locked).

Every track's slices nest or are disjoint, as Perfetto needs: where a track's slices would
partially overlap anyway (a lock-free shard's concurrent updates, several pushes of one worker
queued at once), the later ones go to a lane of their own (``worker 3 (g0) #2``). Flow arrows
(flow events ``s`` / ``f``, bound to the enclosing slices) go from each gradient's compute to every
update that applied it.

Big runs: by default the timeline holds the start of the run, up to `DEFAULT_LIMIT` gradients and
update rows together (the gradients pulled first and the updates locked before the next pull:
50,000 gradients of a one-shard asynchronous run, ~50 MB); ``otherData`` says what was kept and
``asgd-sim run`` prints it. ``asgd-sim timeline RUN_DIR --all`` (or ``--start`` / ``--end``)
writes all of it, or any window, from the run's Parquet trace, which always holds every gradient.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..trace import APPLIED, CANCELLED, DROPPED, Trace
from .chrome_trace import EventRows, Thousandths, assign_lanes, csr_positions, joined_lists, nanoseconds, thousandths

__all__ = ["write_timeline", "timeline_window", "timeline_extent", "DEFAULT_LIMIT", "WORKERS_PID", "SERVER_PID", "QUEUE_PID"]

WORKERS_PID, SERVER_PID, QUEUE_PID = 1, 2, 3
DEFAULT_LIMIT = 100_000  # gradients and update rows together: ~50 MB of JSON
# Compute slices, update slices and the flows between them share one category: DevTools binds a
# flow event to the slice with its category, thread and timestamp (Perfetto to the enclosing slice).
_CAT = '"cat":"gradient"'


def timeline_window(trace: Trace, limit: int | None = DEFAULT_LIMIT, start: float | None = None,
                    end: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(gradient ids, update rows, end of the window): the gradients pulled in [start, end) (None:
    from the first, to the last) and the update rows locked in it, at most ``limit`` of the two
    together: then the window ends at the latest pull time that keeps them within the limit
    (the earliest gradients, and the rows locked before it)."""
    t_pull = trace.times["t_pull"]
    start = -math.inf if start is None else float(start)
    end = math.inf if end is None else float(end)
    gids = np.flatnonzero((t_pull >= start) & (t_pull < end))
    rows = np.flatnonzero((trace.u_lock >= start) & (trace.u_lock < end))
    if limit is not None and len(gids) + len(rows) > limit:
        by_time = gids[np.lexsort((gids, t_pull[gids]))]
        cuts = t_pull[by_time]
        # Ending the window at cuts[k] keeps the k gradients before it and the rows locked before it.
        shown = np.arange(len(cuts)) + np.searchsorted(np.sort(trace.u_lock[rows]), cuts, side="left")
        k = int(np.searchsorted(shown, limit, side="right")) - 1
        if k >= 1:
            end = float(cuts[k])
            gids = np.sort(by_time[:k][cuts[:k] < end])  # (pulls at the cut itself all go: a round's share one instant)
        else:  # not even one gradient fits: the first instant's gradients alone
            end = math.nextafter(float(cuts[0]), math.inf)
            gids = np.sort(by_time[cuts <= cuts[0]])
        rows = rows[trace.u_lock[rows] < end]
    return gids, rows, end


def timeline_extent(trace: Trace, gids: np.ndarray | None = None, rows: np.ndarray | None = None,
                    start: float | None = None, end: float | None = None) -> dict[str, Any]:
    """What a timeline of ``trace`` holds (the default window when ``gids`` is None): the
    ``otherData`` of its file, and what ``asgd-sim run`` prints of it."""
    if gids is None or rows is None:
        gids, rows, end = timeline_window(trace)
    end = None if end is None or math.isinf(end) else float(end)
    return {"gradients_shown": len(gids), "gradients_total": trace.num_gradients, "update_rows_shown": len(rows),
            "update_rows_total": trace.num_update_rows, "window_s": [None if start is None else float(start), end],
            "truncated": bool(len(gids) < trace.num_gradients or len(rows) < trace.num_update_rows),
            "full_timeline": "asgd-sim timeline RUN_DIR --all"}


class _Slices:
    """Slices of one process (one row template each), then given their tracks together: a track
    per key (worker or shard), with more lanes where slices would partially overlap."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, Any]] = {}

    def add(self, name: str, key: np.ndarray, start: np.ndarray, end: np.ndarray, mask: np.ndarray, *,
            keep_empty: bool = False, merge_equal: bool = False, **columns: np.ndarray) -> None:
        """Slices ``name`` over [start, end) where ``mask``; empty ones only with ``keep_empty``;
        with ``merge_equal`` one slice for each distinct (key, start, end): the apply of two
        gradients of one worker in one update is one apply on its track."""
        ok = np.flatnonzero(mask & ((end >= start) if keep_empty else (end > start)))
        if merge_equal and len(ok) > 1:
            order = ok[np.lexsort((end[ok], start[ok], key[ok]))]
            repeat = (key[order[1:]] == key[order[:-1]]) & (start[order[1:]] == start[order[:-1]]) & (end[order[1:]] == end[order[:-1]])
            ok = np.sort(order[np.r_[True, ~repeat]])
        self.parts[name] = {"key": key[ok], "start": start[ok], "end": end[ok], **{k: v[ok] for k, v in columns.items()}}

    def lay_out(self) -> int:
        """Give every slice its tid (key * lanes + lane); returns the number of lanes."""
        parts = list(self.parts.values())
        key = np.concatenate([p["key"] for p in parts])
        lanes = assign_lanes(key, np.concatenate([p["start"] for p in parts]), np.concatenate([p["end"] for p in parts]))
        width = int(lanes.max(initial=0)) + 1
        at = 0
        for p in parts:
            n = len(p["key"])
            p["tid"] = p["key"] * width + lanes[at:at + n]
            at += n
        return width

    def tids(self) -> np.ndarray:
        return np.unique(np.concatenate([p["tid"] for p in self.parts.values()]))


def write_timeline(trace: Trace, path: str | Path, limit: int | None = DEFAULT_LIMIT, *,
                   start: float | None = None, end: float | None = None) -> dict[str, Any]:
    """Write the timeline of the window `timeline_window` picks to ``path``; returns what it
    kept (also in the file's ``otherData``)."""
    gids, rows, window_end = timeline_window(trace, limit, start, end)
    seconds = {name: values[gids] for name, values in trace.times.items()}
    finite = {name: np.isfinite(values) for name, values in seconds.items()}
    t = {name: nanoseconds(values) for name, values in seconds.items()}
    worker = trace.worker[gids].astype(np.int64)
    local_step, fate = trace.local_step[gids], trace.fate[gids]
    pushes = _last_of_push(worker, local_step)

    workers = _Slices()  # what each worker does
    # A pull shows where the worker asked for parameters after its last compute: a round's later
    # gradients (K-batch, Rennala) reuse the round's read, stamped with the round's pull time.
    pulled = (local_step == 0) & finite["t_pull"] & finite["t_compute_start"] & (t["t_pull"] >= _previous_end(worker, t, finite))
    workers.add("pull", worker, t["t_pull"], t["t_compute_start"], pulled)
    computed = finite["t_compute_start"] & finite["t_compute_end"]
    workers.add("compute", worker, t["t_compute_start"], t["t_compute_end"], computed, keep_empty=True, gid=gids,
                cancelled=fate == CANCELLED)
    workers.add("push", worker, t["t_compute_end"], t["t_arrive"], pushes & finite["t_compute_end"] & finite["t_arrive"])
    worker_lanes = workers.lay_out()

    queue = _Slices()  # each push once it reached the server
    queue.add("wait", worker, t["t_arrive"], t["t_lock"], pushes & finite["t_arrive"] & finite["t_lock"])
    queue.add("apply", worker, t["t_lock"], t["t_applied"], pushes & (fate == APPLIED) & finite["t_lock"] & finite["t_applied"],
              merge_equal=True)
    dropped_end = np.where(finite["t_applied"], t["t_applied"], t["t_lock"])  # (dropped on every shard: an instant)
    queue.add("dropped", worker, t["t_lock"], dropped_end, pushes & (fate == DROPPED) & finite["t_lock"], keep_empty=True,
              merge_equal=True)
    queue_lanes = queue.lay_out()

    shards = _Slices()  # each update's lock hold
    shards.add("update", trace.u_shard[rows].astype(np.int64), nanoseconds(trace.u_lock[rows]),
               nanoseconds(trace.u_applied[rows]), np.ones(len(rows), bool), keep_empty=True, row=rows)
    shard_lanes = shards.lay_out()

    with open(path, "wb") as handle:
        out = EventRows(handle)
        _write_slices(out, workers, WORKERS_PID, "pull")
        _write_computes(out, trace, workers.parts["compute"])
        _write_slices(out, workers, WORKERS_PID, "push")
        for name in queue.parts:
            _write_slices(out, queue, QUEUE_PID, name)
        _write_updates(out, trace, shards.parts["update"])
        flows = _write_flows(out, trace, workers.parts["compute"], shards.parts["update"])
        _write_staleness(out, trace, shards.parts["update"])
        _write_waiting(out, t["t_arrive"][pushes & finite["t_arrive"]], t["t_lock"][pushes & finite["t_arrive"] & finite["t_lock"]])
        info = {**timeline_extent(trace, gids, rows, start, window_end), "flows": flows}
        last = _write_names(out, trace, (workers, worker_lanes), (queue, queue_lanes), (shards, shard_lanes))
        out.close(last, displayTimeUnit="ms", otherData={"asgd_sim": info})
    info["events"] = out.count
    return info


def _by_worker(worker: np.ndarray) -> np.ndarray:
    return np.lexsort((np.arange(len(worker)), worker))


def _previous_end(worker: np.ndarray, t: dict[str, np.ndarray], finite: dict[str, np.ndarray]) -> np.ndarray:
    """Per gradient, the compute end of its worker's previous gradient (the int64 minimum if none)."""
    end = np.where(finite["t_compute_end"], t["t_compute_end"], np.iinfo(np.int64).min)
    order = _by_worker(worker)
    out = np.full(len(worker), np.iinfo(np.int64).min, np.int64)
    if len(order) > 1:
        same = worker[order[1:]] == worker[order[:-1]]
        out[order[1:][same]] = end[order[:-1]][same]
    return out


def _last_of_push(worker: np.ndarray, local_step: np.ndarray) -> np.ndarray:
    """The gradient that ends each push: a local-SGD period's last step (every gradient without
    local steps). A period's gradients share its push's arrival, lock and apply times."""
    order = _by_worker(worker)
    last = np.ones(len(worker), bool)
    if len(order) > 1:
        continues = (worker[order[1:]] == worker[order[:-1]]) & (local_step[order[1:]] > 0)
        last[order[:-1][continues]] = False
    return last


def _head(part: dict[str, Any], pid: int) -> list[Any]:
    return ['{"ph":"X","pid":%d,"tid":' % pid, part["tid"], ',"ts":', Thousandths(part["start"]), ',"dur":',
            Thousandths(part["end"] - part["start"])]


def _write_slices(out: EventRows, slices: _Slices, pid: int, name: str) -> None:
    part = slices.parts[name]
    if len(part["key"]):
        out.rows(*_head(part, pid), ',"name":"%s"}' % name)


def _write_computes(out: EventRows, trace: Trace, compute: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    g = compute["gid"]
    if not len(g):
        return
    name = pc.if_else(pa.array(compute["cancelled"]), "compute (cancelled)", "compute")
    versions = trace.read_version[g]
    read: list[Any] = [versions[:, 0]]
    if trace.shards > 1:  # one version per shard
        read = ["["] + [piece for s in range(trace.shards) for piece in ([","] if s else []) + [versions[:, s]]] + ["]"]
    out.rows(*_head(compute, WORKERS_PID), ',"name":"', name, '",' + _CAT + ',"args":{"gid":', g, ',"k":', trace.k[g],
             ',"staleness":', trace.staleness[g], ',"read_version":', *read, "}}")


def _write_updates(out: EventRows, trace: Trace, update: dict[str, Any]) -> None:
    rows = update["row"]
    if len(rows):
        out.rows(*_head(update, SERVER_PID), ',"name":"v', trace.u_version[rows], '",' + _CAT + ',"args":{"push":',
                 trace.u_push[rows], ',"gradients":[', joined_lists(trace.member_offsets, trace.member_gid, rows), "]}}")


def _write_flows(out: EventRows, trace: Trace, compute: dict[str, Any], update: dict[str, Any]) -> int:
    """A flow from each gradient's compute slice to each update slice that applied it (both in
    the window); its id is the gradient's place in the trace's member lists, unique in the trace.
    ``s`` is stamped at its compute's start and ``f`` at its update's start, after the slices."""
    rows = update["row"]
    if not len(rows) or not len(compute["gid"]):
        return 0
    member, row_index = csr_positions(trace.member_offsets, rows)
    slot = np.full(trace.num_gradients, -1, np.int64)
    slot[compute["gid"]] = np.arange(len(compute["gid"]))
    slot = slot[trace.member_gid[member]]
    shown = slot >= 0
    member, row_index, slot = member[shown], row_index[shown], slot[shown]
    if len(member):
        out.rows('{"ph":"s","name":"gradient",' + _CAT + ',"id":', member, ',"pid":%d,"tid":' % WORKERS_PID, compute["tid"][slot],
                 ',"ts":', Thousandths(compute["start"][slot]), "}")
        out.rows('{"ph":"f","bp":"e","name":"gradient",' + _CAT + ',"id":', member, ',"pid":%d,"tid":' % SERVER_PID,
                 update["tid"][row_index], ',"ts":', Thousandths(update["start"][row_index]), "}")
    return len(member)


def _write_staleness(out: EventRows, trace: Trace, update: dict[str, Any]) -> None:
    """Counter ``staleness``: the mean and max staleness of each update's gradients, when it lands
    (shard 0's rows: a gradient's staleness is its maximum over shards)."""
    first = (trace.u_shard[update["row"]] == 0) & (np.diff(trace.member_offsets)[update["row"]] > 0)
    rows, when = update["row"][first], update["end"][first]
    if not len(rows):
        return
    member, row_index = csr_positions(trace.member_offsets, rows)
    stale = trace.staleness[trace.member_gid[member]].astype(np.float64)
    counts = np.bincount(row_index, minlength=len(rows))
    mean = np.bincount(row_index, weights=stale, minlength=len(rows)) / counts
    top = np.maximum.reduceat(stale, np.r_[0, np.cumsum(counts)[:-1]]).astype(np.int64)
    out.rows('{"ph":"C","name":"staleness","pid":%d,"ts":' % SERVER_PID, Thousandths(when), ',"args":{"mean":', thousandths(mean),
             ',"max":', top, "}}")


def _write_waiting(out: EventRows, arrivals: np.ndarray, locks: np.ndarray) -> None:
    """Counter ``pushes waiting``: pushes arrived at the server and not yet holding the lock
    (+1 at each arrival, -1 at its lock; one value per instant)."""
    stamps = np.concatenate([arrivals, locks])
    if not len(stamps):
        return
    steps = np.concatenate([np.ones(len(arrivals), np.int64), -np.ones(len(locks), np.int64)])
    order = np.argsort(stamps, kind="stable")
    stamps, level = stamps[order], np.cumsum(steps[order])
    last = np.r_[stamps[1:] != stamps[:-1], True]
    out.rows('{"ph":"C","name":"pushes waiting","pid":%d,"ts":' % SERVER_PID, Thousandths(stamps[last]), ',"args":{"value":',
             level[last], "}}")


def _write_names(out: EventRows, trace: Trace, workers: tuple[_Slices, int], queue: tuple[_Slices, int],
                 shards: tuple[_Slices, int]) -> dict[str, Any]:
    """Process and thread names (a track per worker or shard, ``#2``... for extra lanes); returns
    the last event for `EventRows.close`."""
    groups = trace.worker_groups()

    def worker_name(w: int) -> str:
        group = groups[w] if w < len(groups) else ""
        return f"worker {w}" + (f" ({group})" if group else "")

    events = []
    for pid, name, order in ((WORKERS_PID, "workers", 0), (QUEUE_PID, "at the server", 1), (SERVER_PID, "server shards", 2)):
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": order}})
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}})
    for pid, (slices, width), label in ((WORKERS_PID, workers, worker_name), (QUEUE_PID, queue, worker_name),
                                        (SERVER_PID, shards, lambda s: f"shard {s}")):
        for tid in slices.tids().tolist():
            key, lane = divmod(tid, width)
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                           "args": {"name": label(key) + (f" #{lane + 1}" if lane else "")}})
    for event in events[:-1]:
        out.event(event)
    return events[-1]
