"""The workers' side of the timing engine: how each worker pulls, computes and pushes, in time.

Two implementations of one loop (pull -> compute -> push -> the server's answer), which create
the same SimPy events in the same order, so a scenario gives the same trace with either:

- `ProcessLoop`: each worker is a SimPy process (a plain generator, docs/STYLE.md 1). It models
  everything: network transfers over fairly shared links, computations sharing a device, failures
  and restarts. Such a worker goes through its iteration as a chain of stages (`timing.stages`).
- `CallbackLoop`: each worker is a chain of callbacks on its own timeouts, with no process and no
  generator to resume, for clusters whose messages take no transfer time, whose workers never
  fail or share a device, and whose locks are not readers-writer (a read there may wait). Thousands of workers, and
  rounds that restart all of them, cost a few microseconds per computation instead of a process
  resumption or an interrupt each.

Both reach the engine through the small `Server` protocol: its clock, trace and policy, its
answer to a push (a generator: it may wait for locks, apply times, or the policy's hold) and its
reads. A stop of a worker's computation (`stop`) and the server's resuming it (its ``wake`` event,
succeeded with `RESTARTED`) follow the same protocol in both.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from functools import partial
from heapq import heappop, heappush
from typing import Any, Protocol

import numpy as np
import simpy

from ..algorithms.base import worker_array
from ..trace import CANCELLED, TraceBuilder
from .cohorts import Run, WorkerTable
from .events import RESTARTED, Timeout
from .network import FairShare
from .stages import Context, Iteration
from .workers import WorkerState

__all__ = ["Server", "ProcessLoop", "CallbackLoop", "callbacks_suffice"]


class Server(Protocol):
    """What a worker loop needs of the engine."""

    env: simpy.Environment
    trace: TraceBuilder
    policy: Any
    local_steps: int
    bandwidth: float

    def serve(self, w: WorkerState, gids: list[int]) -> Generator:
        """The server's answer to ``w``'s push of ``gids`` (runs in the worker's turn; may wait)."""

    def read(self) -> Generator:
        """Serve an explicit read; returns the versions read (may wait for a write in progress)."""


def callbacks_suffice(scenario: Any, workers: list[WorkerState]) -> bool:
    """Whether `CallbackLoop` models the scenario: no transfer time, no failures, no rw lock, and
    no worker on a device (a computation's rate there changes with the device's load)."""
    return (not scenario.has_transfer_time and scenario.server.lock != "rw"
            and not any(w.failure_times or w.mtbf is not None or w.routes is not None for w in workers))


def compute(w: WorkerState, gids: list[int], start: float, trace: TraceBuilder, bandwidth: float) -> float:
    """Record the compute of ``gids`` (one after the other) starting at ``start``; when it ends."""
    t = start
    for gid in gids:
        work = w.compute() if w.pipeline is None else w.step_time(w.compute(), bandwidth)
        end = w.slowdowns.finish(t, work) if w.slowdowns.starts else t + work  # (no slowdown window: no call)
        trace.t_compute_start[gid] = t
        trace.t_compute_end[gid] = end
        w.busy += end - t
        t = end
    return t


def abandon(w: WorkerState, trace: TraceBuilder, now: float) -> None:
    """The worker's unpushed gradients are cancelled at ``now`` (a failure, or a stop)."""
    if w.chain is not None:  # its transfers and device work stop; what was laid out past now is cut below
        w.chain.cancel(now)
        w.chain = None
    for gid in w.unpushed:
        trace.fate[gid] = CANCELLED
        # The compute was recorded when scheduled (in full, possibly starting after a response
        # latency still under way): cut it at the cancellation so the trace never shows a
        # cancelled compute overlapping the worker's next one, and busy time counts only the
        # work actually done. (Fix: tests/test_engine_exact.py::test_backup_worker_round.)
        start, end = trace.t_compute_start[gid], trace.t_compute_end[gid]
        if end > now:
            w.busy -= end - max(start, now)
            if start > now:  # never started: no compute span at all
                trace.t_compute_start[gid] = trace.t_compute_end[gid] = math.nan
            else:
                trace.t_compute_end[gid] = now
    w.unpushed = []
    w.has_params = False


def _new_gradients(server: Server, w: WorkerState) -> list[int]:
    """Trace rows for the worker's next push, at the read it holds."""
    tr, (t_pull, t_read, versions) = server.trace, w.next_read  # type: ignore[misc]
    if server.local_steps == 1:  # (every push of most kinds: no loop)
        gids = [tr.new_gradient(w.wid, w.k, 0, t_pull, t_read, versions)]
        w.k += 1
    else:
        gids = []
        for step in range(server.local_steps):
            gids.append(tr.new_gradient(w.wid, w.k, step, t_pull, t_read, versions))
            w.k += 1
    w.unpushed = gids
    return gids


class ProcessLoop:
    """Each worker a SimPy process (see the module docstring)."""

    def __init__(self, server: Server, workers: list[WorkerState], shares: FairShare, msg_bytes: float) -> None:
        self.server, self.env, self.workers = server, server.env, workers
        self.shares, self.msg_bytes = shares, msg_bytes
        self.ctx = Context(self.env, shares, server.trace, msg_bytes, server.bandwidth)

    def start(self) -> None:
        for w in self.workers:
            w.process = self.env.process(self._worker(w))
            if w.failure_times or w.mtbf:
                self.env.process(self._failures(w))

    def _timeout(self, delay: float, w: WorkerState) -> Timeout:
        return Timeout(self.env, delay, w.priority)

    def _worker(self, w: WorkerState) -> Generator:
        env, server = self.env, self.server
        tr = server.trace
        chain = Iteration(self.ctx, w) if w.routes is not None else None
        if w.start > 0:
            yield self._timeout(w.start, w)
        while True:
            try:
                w.interruptible = True
                if w.next_read is None:  # explicit pull: the request travels to the server
                    t_pull = env.now
                    yield self._timeout(w.latency(), w)
                    w.interruptible = False
                    versions = yield from server.read()
                    w.interruptible = True
                    w.next_read = (t_pull, env.now, versions)
                    server.policy.read(w.wid)
                gids = _new_gradients(server, w)
                if w.routes is None:  # no transfer time, no shared device: one timeout to the arrival
                    now = env._now  # type: ignore[attr-defined]
                    start = now if w.has_params else now + w.latency()
                    w.has_params = False
                    arrive = compute(w, gids, start, tr, server.bandwidth) + w.latency()
                    w.computing = True  # (a stop now detaches it from this timeout: `stop`)
                    outcome = yield Timeout(env, arrive - now, w.priority, at=arrive)
                    w.computing = False
                    if outcome is RESTARTED:  # stopped, then served anew: its next read is set
                        continue
                    for gid in gids:
                        tr.t_arrive[gid] = arrive
                else:
                    w.chain = chain
                    event = chain.begin(gids)
                    chain.waiting = True
                    w.computing = w.routes.pull is None  # (no transfers: a stop detaches it, as on the fast path)
                    outcome = yield event
                    w.computing = False
                    if outcome is RESTARTED:  # stopped, then served anew: its next read is set
                        continue
                    w.chain = None
                    chain.arrived()
                    for gid in gids:
                        tr.t_arrive[gid] = env._now  # type: ignore[attr-defined]
            except simpy.Interrupt as interrupt:
                w.computing = False
                abandon(w, tr, env.now)
                if interrupt.cause == "fail":
                    yield from self._down(w)
                    if not w.alive:
                        return
                else:  # stopped: the server serves it anew (its round's broadcast)
                    w.interruptible = False
                    yield w.wake
                continue
            w.interruptible = False
            w.unpushed = []
            yield from server.serve(w, gids)
            if w.pending_failure:
                yield from self._down(w)
                if not w.alive:
                    return

    def stop(self, w: WorkerState) -> None:
        """Stop ``w``'s computation in progress; it resumes once the server serves it.

        A worker waiting on its compute timeout (no network transfers in flight: the common case,
        and rounds that restart thousands of workers) is detached from the timeout and re-attached
        to its wake event, with no SimPy interrupt (an exception and an extra event per worker);
        the stale timeout later fires with no one listening. Any other worker is interrupted.
        """
        w.wake = self.env.event()
        w.waiting = True
        process = w.process
        if w.computing:
            w.computing = False
            process._target.callbacks.remove(process._resume)  # type: ignore[union-attr]
            w.wake.callbacks.append(process._resume)  # type: ignore[union-attr]
            process._target = w.wake  # type: ignore[union-attr]  (a later failure interrupt detaches from it)
            abandon(w, self.server.trace, self.env.now)
        else:
            process.interrupt("cancel")  # type: ignore[union-attr]

    def resumes(self, w: WorkerState) -> bool:
        """(Serving a stopped worker succeeds its wake event: its process resumes.)"""
        return False

    def resume(self, w: WorkerState) -> None:
        raise AssertionError("a process resumes through its wake event")

    def served_other(self) -> None:
        """(Nothing to order here: every wake-up is an event of its own.)"""

    def _down(self, w: WorkerState) -> Generator:
        w.pending_failure = False
        w.alive = False
        self.server.policy.failed(w.wid)
        w.next_read = None
        down = w.down_time()
        if down is None:
            return
        yield self._timeout(down, w)
        w.alive = True
        self.server.policy.restarted(w.wid)
        if w.restarted is not None and not w.restarted.triggered:
            w.restarted.succeed()

    def _failures(self, w: WorkerState) -> Generator:
        """Crash the worker at its failure times (fixed list, or exponential gaps from restart)."""
        env = self.env
        times = iter(w.failure_times)
        while True:
            at = env.now + float(w.failure_rng.exponential(w.mtbf)) if w.mtbf is not None else next(times, None)
            if at is None:
                return
            if at > env.now:
                yield self._timeout(at - env.now, w)
            if not w.alive or w.pending_failure:
                continue  # already down: a listed failure time that falls in a down period is moot
            w.restarted = env.event()
            if w.interruptible:
                w.process.interrupt("fail")  # type: ignore[union-attr]
            else:
                w.pending_failure = True
            if w.mtbf is not None:
                yield w.restarted  # the next gap is counted from the restart


class CallbackLoop:
    """Each worker a chain of callbacks (see the module docstring).

    Arrivals: every computation in progress is an entry (arrival time, worker, serial) of one heap,
    and a single SimPy event (the pump) waits for the earliest, at the priority the worker's own
    timeout would have had; a stop bumps the worker's serial, so its entry is skipped when it comes
    up. Pulls and start delays are timeouts of their own. The server's answer to a push runs at
    once in the arrival's callback; when it has to wait (a lock, an apply time, a hold) it goes on
    from the callback of the event it waits on (`_answer`), not in a SimPy process of its own (its
    start and end would cost two more events per update). Workers the server stops and serves anew
    at one instant restart together in one event, in the order they were served.

    The workers' state is kept in numpy columns (`cohorts.WorkerTable`), so that many workers are
    stopped (`stop_many`), served (`resume_many`) and restarted (`_restart`) in a few numpy steps:
    the same draws, floating-point sums, trace rows and events as one at a time.
    """

    BULK = 8  # fewer workers than this restart one at a time (the result is the same)

    def __init__(self, server: Server, workers: list[WorkerState]) -> None:
        self.server, self.env, self.workers = server, server.env, workers
        self.table = WorkerTable(workers)
        self.serial = self.table.serial
        self.arrivals: list[tuple[float, int, int, list[int]]] = []  # (arrive, worker, serial, gids)
        self.pump_key: tuple[float, int] | None = None  # (time, worker) the pending pump fires for
        self.pump_serial = 0
        # Workers served anew, restarting at this instant: a worker id, or an array of them (a cohort).
        self.restarting: list[int | np.ndarray] | None = None

    def start(self) -> None:
        if self._pull_together_at_start():
            return
        for w in self.workers:
            if w.start > 0:
                self._after(w.start, w, self._iterate)
            else:
                self._iterate(w)

    def _pull_together_at_start(self) -> bool:
        """When every worker starts at once and the latency is one constant, their first pulls
        (explicit requests) all land at one instant, in worker order: one event at the first
        one's place serves them all (`_pulled_together`). False: they pull one by one."""
        latency = self.table.latency
        if (len(self.workers) < self.BULK or self.server.local_steps != 1 or latency.any_random
                or latency.const.min() != latency.const.max() or any(w.start > 0 for w in self.workers)):
            return False
        for w in self.workers:
            w.interruptible = True
        event = Timeout(self.env, float(latency.const[0]), self.workers[0].priority)
        event.callbacks.append(partial(self._pulled_together, self.env.now))
        return True

    def _pulled_together(self, t_pull: float, event: Any) -> None:
        """`_pulled` for every worker, in one step: one read, `read_many`, one cohort. Unless a
        worker would arrive at this very instant (no latency, no compute), between the others'
        pulls: then they pull one by one after all, at their own places."""
        table, now = self.table, self.env.now
        wids = np.arange(len(self.workers))
        drawn = table.compute.positions()
        times = table.times(wids, now, self.server.bandwidth)
        if times[2].min() <= now:
            table.compute.rewind(drawn)  # (one draw each: the workers draw the same values again)
            for w in self.workers:
                self._after(0.0, w, self._pulled, t_pull)
            return
        versions = self._read()
        self.server.policy.read_many(wids)
        table.serve(wids, (t_pull, now, versions))
        table.start(wids, now, self.server.trace, self.server.bandwidth, times)
        self._pump()

    def _after(self, delay: float, w: WorkerState, then: Any, *args: Any) -> None:
        """Call ``then(w, *args)`` after ``delay``, unless the worker is stopped first."""
        timeout = Timeout(self.env, delay, w.priority)
        timeout.callbacks.append(partial(self._fire, w, self.serial[w.wid], then, args))

    def _fire(self, w: WorkerState, serial: int, then: Any, args: tuple, event: Any) -> None:
        if serial == self.serial[w.wid]:
            then(w, *args)

    def _iterate(self, w: WorkerState, event: Any = None) -> None:
        """The top of the worker's loop: pull explicitly, or compute on the read it holds."""
        w.interruptible = True
        if w.next_read is None:  # explicit pull: the request travels to the server
            self._after(w.latency(), w, self._pulled, self.env.now)
        else:
            self._compute(w)
            self._pump()

    def _read(self) -> list[int]:
        reader = self.server.read()
        try:
            next(reader)
            raise AssertionError("a read waited: no readers-writer lock runs with callbacks")
        except StopIteration as done:
            return done.value

    def _pulled(self, w: WorkerState, t_pull: float) -> None:
        w.next_read = (t_pull, self.env.now, self._read())
        self.server.policy.read(w.wid)
        self._compute(w)
        self._pump()

    def _compute(self, w: WorkerState) -> None:
        """Start the worker's computation on the read it holds; its arrival goes on the heap."""
        gids = _new_gradients(self.server, w)
        now = self.env._now  # type: ignore[attr-defined]
        start = now if w.has_params else now + w.latency()
        w.has_params = False
        arrive = compute(w, gids, start, self.server.trace, self.server.bandwidth) + w.latency()
        heappush(self.arrivals, (arrive, w.wid, self.serial[w.wid], gids))

    def _earliest(self) -> tuple[float, int, Run | None] | None:
        """The earliest live arrival (time, worker, its run or None for the heap), skipping stopped
        entries; None when no computation is in progress."""
        heap, serial, runs = self.arrivals, self.serial, self.table.runs
        while heap and heap[0][2] != serial[heap[0][1]]:
            heappop(heap)
        best = (heap[0][0], heap[0][1], None) if heap else None
        if runs:  # (cohorts restarted together)
            for run in list(runs):
                head = run.head(serial)
                if head is None:
                    runs.remove(run)
                elif best is None or head < best[:2]:
                    best = (head[0], head[1], run)
        return best

    def _pump(self) -> None:
        """Make the pending pump event the earliest live arrival's."""
        earliest = self._earliest()
        if earliest is None or self.pump_key == earliest[:2]:
            return
        arrive, wid = earliest[0], earliest[1]
        self.pump_serial += 1
        self.pump_key = (arrive, wid)
        now = self.env._now  # type: ignore[attr-defined]
        event = Timeout(self.env, arrive - now, self.workers[wid].priority, at=arrive)
        event.serial = self.pump_serial  # type: ignore[attr-defined]  (on the event: no partial per pump)
        event.callbacks.append(self._pumped)

    def _pumped(self, event: Any) -> None:
        if event.serial != self.pump_serial:
            return  # superseded by an earlier arrival
        self.pump_key = None
        earliest = self._earliest()
        if earliest is not None and earliest[0] == self.env._now:  # type: ignore[attr-defined]
            arrive, wid, run = earliest
            w = self.workers[wid]
            if run is None:
                gids = heappop(self.arrivals)[3]
            else:
                gids = run.pop()
                self.table.attach(w)
            self._arrived(w, gids, arrive)
        self._pump()

    def _arrived(self, w: WorkerState, gids: list[int], arrive: float) -> None:
        tr = self.server.trace
        for gid in gids:
            tr.t_arrive[gid] = arrive
        w.interruptible = False
        w.unpushed = []
        self._answer(w, self.server.serve(w, gids), None)

    def _answer(self, w: WorkerState, answer: Generator, event: Any) -> None:
        """Run the server's answer to ``w``'s push until it waits (a lock, an apply time, a hold);
        it goes on from the callback of the event it waits on, and the worker iterates once it is
        done. (A SimPy process would do the same with two more events per wait: its start and its
        end, a third of all events on the asynchronous fast path.)"""
        value = None if event is None else event._value
        while True:
            try:
                waits_for = answer.send(value)
            except StopIteration:
                self._iterate(w)
                return
            if waits_for.callbacks is not None:  # not processed yet: go on when it is
                waits_for.callbacks.append(partial(self._answer, w, answer))
                return
            value = waits_for._value

    # ---- stops and restarts ------------------------------------------------------------------

    def stop(self, w: WorkerState) -> None:
        """Stop ``w``'s computation (or explicit pull) in progress: its pending arrival or pull goes
        stale, and it restarts once the server serves it (`resume`)."""
        self.table.attach(w)
        self.serial[w.wid] += 1
        self.table.stopped[w.wid] = True
        abandon(w, self.server.trace, self.env.now)

    def stop_many(self, wids: list[int]) -> None:
        """`stop` every worker of ``wids`` that is computing or pulling (not at the server): the
        detached ones in one numpy step (`WorkerTable.stop`), the others one by one."""
        table, workers = self.table, self.workers
        if len(wids) < self.BULK:
            for wid in wids:
                w = workers[wid]
                if w.alive and (table.detached[wid] or w.interruptible):
                    self.stop(w)
            return
        named = worker_array(wids)
        detached = table.detached[named]
        for wid in named[~detached].tolist():
            w = workers[wid]
            if w.alive and w.interruptible:
                self.stop(w)
        table.stop(named[detached], self.server.trace, self.env.now)

    def resumes(self, w: WorkerState) -> bool:
        """Whether serving ``w`` restarts it here (it was stopped), instead of waking its process."""
        self.table.attach(w)  # (it is served on its own: its WorkerState is read and written)
        return bool(self.table.stopped[w.wid])

    def resumable(self, wids: np.ndarray) -> np.ndarray | None:
        """Per entry of ``wids``, whether it names a stopped worker that `resume_many` may serve;
        None if the workers are better served one by one (one named twice, several gradients per
        push)."""
        if self.server.local_steps != 1 or np.bincount(wids, minlength=len(self.workers)).max() > 1:
            return None
        return self.table.stopped[wids]

    def resume(self, w: WorkerState) -> None:
        """The server served stopped worker ``w`` anew: it restarts at this instant, with the other
        stopped workers served in a row (one event, the place the first one's wake-up had)."""
        self.table.stopped[w.wid] = False
        self._restarting().append(w.wid)

    def resume_many(self, wids: np.ndarray, read: tuple[float, float, list[int]]) -> None:
        """`resume` for stopped workers ``wids`` (distinct), served ``read`` in a row."""
        self.table.serve(wids, read)
        self._restarting().append(wids)

    def _restarting(self) -> list[int | np.ndarray]:
        if self.restarting is None:
            self.restarting = []
            event = self.env.event()
            event.callbacks.append(partial(self._restart, self.restarting))
            event.succeed()
        return self.restarting

    def served_other(self) -> None:
        """Another worker's wake-up was scheduled: later restarts go after it (a new event)."""
        self.restarting = None

    def _restart(self, batch: list[int | np.ndarray], event: Any) -> None:
        if batch is self.restarting:
            self.restarting = None
        wids = np.concatenate([np.atleast_1d(np.asarray(item, np.int64)) for item in batch])
        if len(wids) < self.BULK or self.server.local_steps != 1 or np.bincount(wids).max() > 1:
            self._restart_each(wids.tolist())
        else:
            self._restart_together(wids)
        self._pump()

    def _restart_each(self, wids: list[int]) -> None:
        for wid in wids:
            w = self.workers[wid]
            self.table.attach(w)
            w.interruptible = True
            if w.next_read is None:
                self._after(w.latency(), w, self._pulled, self.env.now)
            else:
                self._compute(w)

    def _restart_together(self, wids: np.ndarray) -> None:
        """Restart ``wids`` (distinct; one gradient per push) with one trace append and one `Run`;
        the ones served on their own join the cohort, those without a read pull explicitly."""
        table, together = self.table, np.ones(len(wids), bool)
        for i in np.flatnonzero(~table.detached[wids]).tolist():
            w = self.workers[int(wids[i])]
            w.interruptible = True
            if w.next_read is None:
                self._after(w.latency(), w, self._pulled, self.env.now)
                together[i] = False
            else:
                table.serve(wids[i:i + 1], w.next_read)
        table.start(wids[together], self.env.now, self.server.trace, self.server.bandwidth)
