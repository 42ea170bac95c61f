"""Asynchronous SGD on a server that never makes a push wait, computed in closed form.

When every push is applied the instant it arrives (no apply time, so no lock is ever held; no
transfer time; no failures, slowdown windows, pipelines, shared devices or staggered starts),
asynchronous SGD's schedule is a superposition of independent renewal processes: worker i's
arrivals are the running sums of its own draws (response latency, compute, push latency), and
the server applies the arrivals in time order, each pusher reading the version its own update
made. This is the setting of the asynchronous papers' simulations (e.g. the Ringmaster paper's
Section G: thousands of workers, no network, no server cost).

`ClosedFormAsync` computes those sums for every worker in numpy steps (the same draws from the
same per-worker streams, the same floating-point additions in the same order as
`timing.loops.CallbackLoop`), merges them in the order the callback loop's pump takes them
(arrival time, then worker id, then the worker's own order), and writes the trace in bulk: the
SimPy engine's trace bit for bit (tests/test_closed_form.py), at a few numpy operations per
thousand updates instead of a SimPy event and a dozen Python calls per update.
`make_timing_engine` picks it when the scenario allows (`closed_form_applies`), else the SimPy
engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from ..algorithms import AsyncPolicy, make_policy
from ..scenario.config import Scenario
from ..trace import Trace, TraceBuilder, trace_meta
from .engine import DEFAULT_PARAM_BYTES, TimingEngine, TimingResult, fewer_collections
from .workers import SamplerBank, build_workers

__all__ = ["ClosedFormAsync", "closed_form_applies", "make_timing_engine"]

WINDOW_EVENTS = 65_536  # arrivals merged per window of simulated time (about; the window adapts)


def closed_form_applies(scenario: Scenario) -> bool:
    """Whether asynchronous SGD's schedule in ``scenario`` is the merge of independent renewal
    processes (see the module docstring); then `ClosedFormAsync` gives the SimPy engine's trace."""
    sc = scenario
    policy = make_policy(sc)
    if type(policy) is not AsyncPolicy or policy.may_drop or policy.local_steps != 1:
        return False
    apply_time, latency = sc.server.apply_time, sc.network.latency
    if not (apply_time.is_constant and apply_time.mean == 0.0) or not latency.is_constant:
        return False
    if sc.server.shards != 1 or sc.server.lock == "rw" or sc.has_transfer_time or sc.devices:
        return False
    if sc.run.until_time is None and sc.run.until_updates is None:
        return False
    if sc.run.until_time is not None and latency.mean > sc.run.until_time:
        return False  # (no read happens before the horizon)
    for group in sc.workers:
        if (group.stagger > 0 or group.slowdowns or group.failures.at or group.failures.mtbf is not None
                or group.device is not None or (group.pipeline and (group.pipeline.stages > 1 or group.pipeline.microbatches > 1))):
            return False
    racks = {rack.name: rack for rack in sc.racks}
    return not any(group.rack in racks and racks[group.rack].slowdowns for group in sc.workers)


def make_timing_engine(scenario: Scenario, param_bytes: float | None = None) -> TimingEngine | ClosedFormAsync:
    """The timing engine for ``scenario``: `ClosedFormAsync` where it applies, else the SimPy
    `TimingEngine` (both are schedules for `numerics.stream.drive` and give the same trace)."""
    if closed_form_applies(scenario):
        engine = ClosedFormAsync(scenario, param_bytes)
        if engine.exact:
            return engine
    return TimingEngine(scenario, param_bytes)


class _Events:
    """Computations laid out, sorted by (arrive, worker, k): the order the updates take. ``cursor``
    counts the ones applied; ``following[i]`` is the position of event i's worker's next one."""

    __slots__ = ("arrive", "wid", "k", "start", "end", "busy", "following", "cursor")

    def __init__(self, columns: list[np.ndarray] | None = None) -> None:
        empty_f, empty_i = np.zeros(0), np.zeros(0, np.int64)
        self.arrive, self.wid, self.k, self.start, self.end, self.busy = columns or (empty_f, empty_i, empty_i, empty_f, empty_f, empty_f)
        self.cursor = 0
        by_worker = np.lexsort((self.k, self.wid))  # each worker's computations in its own order
        self.following = np.full(len(self.wid), -1, np.int64)
        self.following[by_worker[:-1]] = by_worker[1:]  # (a worker's last one points at another's: never read)

    def columns(self) -> list[np.ndarray]:
        return [self.arrive, self.wid, self.k, self.start, self.end, self.busy]

    def merged(self, more: list[list[np.ndarray]]) -> _Events:
        """The events not applied yet and ``more`` (lists of columns), sorted."""
        columns = [np.concatenate([mine[self.cursor:], *(part[i] for part in more)]) for i, mine in enumerate(self.columns())]
        order = np.lexsort((columns[2], columns[1], columns[0]))
        return _Events([column[order] for column in columns])


class ClosedFormAsync:
    """Asynchronous SGD's schedule in closed form (see the module docstring); a drop-in for
    `TimingEngine` where `closed_form_applies`: ``step_until``, ``run``, ``freeze``, ``trace``,
    ``stopped``, ``env.now``, ``updates``.

    Each worker's computations are laid out ahead in windows of simulated time: every worker
    whose next arrival falls inside the window draws its next computation, until none does
    (one numpy step per draw round, over the workers still inside). A gradient's compute is the
    one that follows its worker's previous arrival; the arrivals inside the window, merged, are
    the next updates in order, and are applied as `step_until` asks for them.
    """

    def __init__(self, scenario: Scenario, param_bytes: float | None = None) -> None:
        self.scenario = sc = scenario
        self.param_bytes = float(param_bytes if param_bytes is not None else (sc.model.param_bytes or DEFAULT_PARAM_BYTES))
        self.M = M = sc.num_workers
        self.trace = TraceBuilder(1)
        self.env = SimpleNamespace(now=0.0)
        self.stopped = ""
        self.deadlock: list[str] = []
        self.updates = 0
        self.until_updates = sc.run.until_updates if sc.run.until_updates is not None else math.inf
        self.until_time = sc.run.until_time if sc.run.until_time is not None else math.inf
        workers = build_workers(sc, sc.network.latency)
        self.compute = SamplerBank([w.compute for w in workers])
        self.latency = float(sc.network.latency.mean)
        # Per worker: its last computation laid out (arrival, busy time so far, local iteration),
        # its gradient in flight (gid) and the update its last push made (-1: none yet).
        self.front = np.full(M, self.latency)  # the first read is served one latency after t = 0
        self.busy = np.zeros(M)
        self.k = np.full(M, -1, np.int64)
        self.in_flight = np.arange(M, dtype=np.int64)
        self.busy_in_flight = np.zeros(M)  # busy time through the computation in flight
        self.pending = _Events()  # laid out, not applied; the first `ready` are known to be next
        self.ready = 0
        self.horizon = self.latency  # every arrival up to here is laid out
        first = self._lay_out_once(np.arange(M))
        # The callback loop serves all first reads in one step unless one would arrive at once
        # (then they pull one by one, in another order): that case is left to the SimPy engine.
        self.exact = bool(first[0].min() > self.latency) if M else False
        self.first = first
        self.busy_in_flight[:] = first[5]
        self.started = False
        cycle = first[0] - self.latency  # first read to first arrival
        rate = float(np.sum(1.0 / np.maximum(cycle, 1e-300))) if M else 1.0
        self.window = WINDOW_EVENTS / rate if rate > 0 else math.inf

    # ---- laying out computations -------------------------------------------------------------

    def _lay_out_once(self, wids: np.ndarray) -> list[np.ndarray]:
        """The next computation of each of ``wids`` (distinct): read at its last arrival, start one
        latency later, compute, arrive one latency after; the additions `CallbackLoop` makes."""
        start = self.front[wids] + self.latency
        end = start + self.compute.draw(wids)
        arrive = end + self.latency
        self.busy[wids] += end - start
        self.k[wids] += 1
        self.front[wids] = arrive
        return [arrive, wids, self.k[wids], start, end, self.busy[wids]]

    def _lay_out(self, horizon: float) -> None:
        """Lay out every computation that arrives by ``horizon`` (and each worker's first after it)."""
        parts = []
        if not self.started:
            parts.append(self.first)
            self.started = True
        inside = np.flatnonzero(self.front <= horizon)
        while inside.size:
            parts.append(self._lay_out_once(inside))
            inside = inside[self.front[inside] <= horizon]
        self.pending = self.pending.merged(parts)
        self.horizon = horizon
        self.ready = int(np.searchsorted(self.pending.arrive, horizon, side="right"))

    def _next_horizon(self) -> float:
        """Where the next window ends: ``window`` further, and at least at the earliest arrival laid
        out (a window too short for a float to move, or with no arrival in it, is widened)."""
        events = self.pending
        horizon = self.horizon + self.window
        if events.cursor < len(events.arrive) and horizon < events.arrive[events.cursor]:
            horizon = float(events.arrive[events.cursor])
            self.window *= 2.0
        return min(horizon, self.until_time)

    # ---- applying updates --------------------------------------------------------------------

    def _start(self) -> None:
        """The first reads: every worker reads version 0 one latency after t = 0; gids in worker order."""
        M = self.M
        t_read = self.latency
        self.trace.add_gradients(np.arange(M), np.zeros(M, np.int64), np.zeros(M), np.full(M, t_read),
                                 np.zeros(M, np.int64), self.first[3], self.first[4])
        self.env.now = t_read

    def _apply(self, n: int) -> None:
        """Apply the next ``n`` laid-out arrivals (all within the horizon): their update rows, and
        each pusher's next gradient, read at its arrival."""
        events = self.pending
        done = slice(events.cursor, events.cursor + n)
        events.cursor += n
        self.ready -= n
        first = self.updates
        index = np.arange(first, first + n, dtype=np.int64)  # update j: version j -> j + 1
        wid, arrive = events.wid[done], events.arrive[done]
        nxt = events.following[done]  # each pusher's next computation, laid out already
        pushed = self._pushed(wid, index)
        # (the gradients first: a worker pushing twice in the batch pushes the second time the one
        # its first push started)
        self.trace.add_gradients(wid, events.k[nxt], arrive, arrive, index + 1, events.start[nxt], events.end[nxt])
        self.trace.record_applies_alone(pushed, index, arrive)
        self.in_flight[wid] = self.M + index  # (a worker twice in the batch: numpy keeps the last assignment)
        self.busy_in_flight[wid] = events.busy[nxt]
        self.updates = first + n
        self.env.now = float(arrive[-1])

    def _pushed(self, wid: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The gid each of these arrivals (workers ``wid``, updates ``index``) pushes: its worker's
        gradient in flight before them, or the one its previous arrival among them started."""
        gids = self.in_flight[wid]
        order = np.argsort(wid, kind="stable")  # by worker, each worker's arrivals in time order
        same = wid[order[1:]] == wid[order[:-1]]
        gids[order[1:][same]] = self.M + index[order[:-1][same]]
        return gids

    # ---- the Schedule protocol -----------------------------------------------------------------

    def step_until(self, updates: float = math.inf, progress: Callable[[int, float], None] | None = None) -> bool:
        """Advance until ``updates`` updates (or the run stops); False once the run has stopped."""
        if self.stopped:
            return False
        with fewer_collections():
            target = min(updates, self.until_updates)
            if not self.trace.num_gradients and self.updates < target:
                self._start()
            while self.updates < target:
                if self.ready == 0:
                    if self.horizon >= self.until_time:
                        self.env.now = self.until_time
                        self.stopped = "until_time"
                        return False
                    self._lay_out(self._next_horizon())
                    continue
                self._apply(int(min(self.ready, target - self.updates)))
                if progress is not None:
                    progress(self.updates, self.env.now)
        if self.updates >= self.until_updates:
            self.stopped = "until_updates"
            return False
        return True

    def run(self, progress: Callable[[int, float], None] | None = None) -> TimingResult:
        started = time.perf_counter()
        self.step_until(progress=progress)
        return self.result(time.perf_counter() - started)

    def freeze(self, meta: dict | None = None, *, copy: bool = True) -> Trace:
        return self.trace.freeze(meta, copy=copy)

    def result(self, wall_time_s: float = 0.0) -> TimingResult:
        trace = self.freeze(trace_meta(self.scenario, self.stopped, self.env.now, param_bytes=self.param_bytes))
        return TimingResult(trace=trace, stopped=self.stopped or "running", sim_time=float(self.env.now),
                            wall_time_s=wall_time_s, updates=self.updates, busy=self._busy_so_far(trace).tolist())

    def _busy_so_far(self, trace: Trace) -> np.ndarray:
        """Each worker's compute time up to now (`TimingEngine._busy_so_far`): its busy time through
        the computation in flight, less the part of it after now."""
        if not self.trace.num_gradients:
            return np.zeros(self.M)
        now = self.env.now
        gid = self.in_flight
        start, end = trace.t_compute_start[gid], trace.t_compute_end[gid]
        busy = self.busy_in_flight.copy()
        late = end > now
        busy[late] -= end[late] - np.maximum(start[late], now)
        return busy
