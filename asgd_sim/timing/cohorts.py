"""The `CallbackLoop`'s workers as numpy columns, so that a round restarting thousands of them costs
a few numpy operations, not Python work per worker.

A round that closes (Rennala, K-sync) or an update that stops the computations that have seen R
updates (Ringmaster) stops many workers at once and serves them anew at one read. Here such a
*cohort* is stopped, served and restarted with vectorised steps: its workers' serials, their
gradients' fates and compute spans, their busy times and their draws (`workers.SamplerBank`),
and its arrivals become one sorted `Run` that the loop's pump walks.

A worker restarted with a cohort is *detached*: the columns, not its `WorkerState`, say what it
holds (its next local iteration ``k``, its compute time ``busy``, its one unpushed gradient
``gid``, its read ``reads[read_of]``; it keeps no parameters and is interruptible).
`WorkerTable.attach` writes that back into the `WorkerState` whenever the worker is handled on
its own (its arrival, a stop or a serve of it alone, the end of a run), so the per-worker code of
`timing.loops` and `timing.engine`, which works on `WorkerState`s alone, never sees a stale field.
"""

from __future__ import annotations

import numpy as np

from ..trace import TraceBuilder
from .workers import SamplerBank, WorkerState

__all__ = ["WorkerTable", "Run"]

NO_GRADIENT = -1


class WorkerTable:
    """Per-worker columns of the callback loop (see the module docstring)."""

    def __init__(self, workers: list[WorkerState]) -> None:
        n = len(workers)
        self.workers = workers
        self.serial = np.zeros(n, np.int64)  # bumped by a stop: a pending arrival or pull with an older one is stale
        self.stopped = np.zeros(n, bool)  # stopped, waiting to be served anew
        self.detached = np.zeros(n, bool)  # the columns below hold its state, not its WorkerState
        self.gid = np.full(n, NO_GRADIENT, np.int64)  # (detached) its unpushed gradient
        self.read_of = np.zeros(n, np.int64)  # (detached) its read, an index into `reads`
        self.reads: list[tuple[float, float, list[int]]] = []  # (t_pull, t_read, versions) of restarts
        self.k = np.zeros(n, np.int64)  # (detached) its next local iteration
        self.busy = np.zeros(n, np.float64)  # (detached) compute time scheduled so far (timing.engine: busy)
        # Workers whose computations take plain draws (no slowdown window, no pipeline) are timed in
        # one numpy step; the others one by one, inside the same restart.
        self.plain = np.array([w.slowdowns.empty and w.pipeline is None for w in workers], bool)
        self.compute = SamplerBank([w.compute for w in workers])
        self.latency = SamplerBank([w.latency for w in workers])
        self.runs: list[Run] = []  # the arrivals of the cohorts, in (arrive, worker) order

    # ---- one worker --------------------------------------------------------------------------

    def attach(self, w: WorkerState) -> None:
        """Write a detached worker's state back into its `WorkerState` (no-op if attached)."""
        wid = w.wid
        if not self.detached[wid]:
            return
        self.detached[wid] = False
        gid = int(self.gid[wid])
        w.unpushed = [gid] if gid != NO_GRADIENT else []
        w.next_read = self.reads[self.read_of[wid]]
        w.has_params = False
        w.interruptible = True
        w.k, w.busy = int(self.k[wid]), float(self.busy[wid])

    def detach(self, wids: np.ndarray) -> None:
        """From now on the columns hold the state of ``wids`` (the attached ones' k and busy move in)."""
        for wid in wids[~self.detached[wids]].tolist():
            w = self.workers[wid]
            self.k[wid], self.busy[wid] = w.k, w.busy
        self.detached[wids] = True

    def sync(self) -> None:
        """Every `WorkerState` up to date (for the engine's result)."""
        for wid in np.flatnonzero(self.detached).tolist():
            self.attach(self.workers[wid])

    # ---- cohorts -----------------------------------------------------------------------------

    def add_read(self, read: tuple[float, float, list[int]]) -> int:
        if not self.reads or self.reads[-1] is not read:
            self.reads.append(read)
        return len(self.reads) - 1

    def stop(self, wids: np.ndarray, trace: TraceBuilder, now: float) -> None:
        """Stop detached workers ``wids``: their pending arrivals go stale, their gradients are
        cancelled and cut at ``now`` (what `timing.loops.abandon` does, one numpy step per column)."""
        self.serial[wids] += 1
        self.stopped[wids] = True
        gids = self.gid[wids]
        live = gids != NO_GRADIENT
        if live.any():
            lost = trace.cancel_computes(gids[live], now)
            self.busy[wids[live]] -= lost  # (a worker named twice loses its compute once)
        self.gid[wids] = NO_GRADIENT

    def serve(self, wids: np.ndarray, read: tuple[float, float, list[int]]) -> None:
        """Stopped workers ``wids`` (distinct) are served ``read``: they are detached, holding it."""
        self.stopped[wids] = False
        self.detach(wids)
        self.gid[wids] = NO_GRADIENT
        self.read_of[wids] = self.add_read(read)

    def times(self, wids: np.ndarray, now: float, bandwidth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """When workers ``wids`` (distinct, none holding its parameters) that start computing at
        ``now`` start, end and arrive: for each, the draws its own loop would take, in the same
        order (response latency, compute, push latency), and the same floating-point sums."""
        starts = now + self.latency.draw(wids)
        work = self.compute.draw(wids)
        ends = starts + work
        for i in np.flatnonzero(~self.plain[wids]).tolist():  # slowdown windows, pipelines
            w = self.workers[int(wids[i])]
            ends[i] = w.slowdowns.finish(float(starts[i]), w.step_time(float(work[i]), bandwidth))
        return starts, ends, ends + self.latency.draw(wids)

    def start(self, wids: np.ndarray, now: float, trace: TraceBuilder, bandwidth: float,
              times: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        """Detached workers ``wids`` (distinct, each holding a read, none its parameters) start
        computing at ``now`` (at `times`, drawn here unless given): their trace rows in this
        order, one append per read held; their arrivals become one `Run`."""
        starts, ends, arrives = times if times is not None else self.times(wids, now, bandwidth)
        ks = self.k[wids]
        reads = self.read_of[wids]
        first = trace.num_gradients
        bounds = [0, *(np.flatnonzero(reads[1:] != reads[:-1]) + 1).tolist(), len(wids)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):  # (usually one read)
            t_pull, t_read, versions = self.reads[int(reads[lo])]
            trace.new_gradients(wids[lo:hi], ks[lo:hi], t_pull, t_read, versions, starts[lo:hi], ends[lo:hi])
        gids = np.arange(first, first + len(wids), dtype=np.int64)
        self.k[wids] = ks + 1
        self.busy[wids] += ends - starts
        self.gid[wids] = gids
        self.runs.append(Run(arrives, wids.copy(), self.serial[wids], gids))


class Run:
    """The arrivals of workers restarted together, taken in (arrival time, worker) order; a cursor
    walks them as they fire, skipping the stopped ones.

    Sorted lazily: a round's cohort is mostly stopped before it arrives (Rennala takes its first
    few arrivals, Ringmaster its fastest workers), so the columns are put in order a chunk at a
    time, the earliest first (`numpy.argpartition`, then a sort of the chunk), the chunk doubling
    each time the cursor reaches its end. A chunk takes every arrival tied with its last one, so
    that ties stay in worker order across chunks.
    """

    __slots__ = ("arrive", "wid", "serial", "gid", "cursor", "ordered", "chunk")

    FIRST_CHUNK = 32

    def __init__(self, arrive: np.ndarray, wid: np.ndarray, serial: np.ndarray, gid: np.ndarray) -> None:
        self.arrive, self.wid, self.serial, self.gid = arrive, wid, serial, gid
        self.cursor = 0
        self.ordered = 0  # entries [0, ordered) are in their final order
        self.chunk = self.FIRST_CHUNK

    def _order_more(self) -> None:
        """Put the next chunk of the earliest arrivals in order, after the ordered ones."""
        lo, n = self.ordered, len(self.wid)
        rest = self.arrive[lo:]
        if self.chunk < n - lo:
            cut = rest[np.argpartition(rest, self.chunk - 1)[self.chunk - 1]]
            pick = np.flatnonzero(rest <= cut)  # (every arrival tied with the chunk's last)
        else:
            pick = np.arange(n - lo)
        pick = pick[np.lexsort((self.wid[lo:][pick], rest[pick]))]
        others = np.ones(n - lo, bool)
        others[pick] = False
        order = lo + np.concatenate([pick, np.flatnonzero(others)])
        for name in ("arrive", "wid", "serial", "gid"):
            column = getattr(self, name)
            column[lo:] = column[order]
        self.ordered = lo + len(pick)
        self.chunk *= 2

    def head(self, serial: np.ndarray) -> tuple[float, int] | None:
        """The earliest live entry, or None once the run is spent."""
        while True:
            i = self.cursor
            if i == len(self.wid):
                return None
            if self.serial[i] != serial[self.wid[i]]:  # stopped: drop every stale entry at once
                self._drop_stale(serial)
            elif i < self.ordered:
                return float(self.arrive[i]), int(self.wid[i])
            else:
                self._order_more()

    def _drop_stale(self, serial: np.ndarray) -> None:
        """Keep only the live entries not yet taken (in their order; a stopped worker's entry never
        comes back to life), so that ordering spends nothing on the stopped."""
        i = self.cursor
        live = self.serial[i:] == serial[self.wid[i:]]
        for name in ("arrive", "wid", "serial", "gid"):
            setattr(self, name, getattr(self, name)[i:][live])
        self.ordered = int(np.count_nonzero(live[:max(0, self.ordered - i)]))
        self.cursor = 0

    def pop(self) -> list[int]:
        i = self.cursor
        self.cursor = i + 1
        return [int(self.gid[i])]
