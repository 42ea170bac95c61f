"""The SimPy timing engine: *when* every gradient is read, computed, pushed and applied.

Timing never depends on parameter values (docs/DESIGN.md), so this module is a pure function of
(scenario, seed) and knows nothing of JAX. Each worker is a plain generator process
(docs/STYLE.md 1) looping: get parameters -> compute -> push -> wait for the server as the algorithm
says. The server side of each algorithm runs inside the process of the worker whose push
triggered it, so an update costs no extra process.

Pinned semantics (tests depend on them):
- A read is recorded when the server serves it. After its push is applied (async, SSP, EASGD),
  included in an update (sync, K-sync, K-async, local SGD) or received (K-batch-async; the push
  that completes a batch is served after the update it triggers), a worker's next pull is served
  at that instant: the push carries the pull request. The very first pull
  (and the first after a restart) is an explicit request that takes one latency to reach the
  server. Either way the parameters then take one latency plus transfer time to come back.
- Staleness = shard version just before the apply minus the version read (max over shards).
- Ties at equal simulated time: events created by the engine's own bookkeeping (lock grants,
  wake-ups) first, then worker timeouts by worker id, then event creation order. Deterministic.
- A gradient in flight when a worker fails, or when its K-sync round closes without it, is
  cancelled. A failure that strikes while the worker waits on the server takes effect once the
  server has answered.
"""

from __future__ import annotations

import gc
import math
import time
from contextlib import contextmanager
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import numpy as np
import simpy

from ..algorithms import Apply, AsyncPolicy, Cancel, Hold, Keep, Pull, Read, Serve, ServerPolicy, Stop, make_policy
from ..algorithms.base import AT_SERVER, worker_array
from ..scenario.config import Scenario
from .events import RESTARTED, Timeout
from .loops import CallbackLoop, ProcessLoop, callbacks_suffice
from .network import FairShare
from .stages import Routes
from .locks import ParameterServer, Shard, find_wait_cycle
from ..trace import CANCELLED, Trace, TraceBuilder, trace_meta
from .workers import SERVER, Sampler, WorkerState, build_workers, stream

__all__ = ["TimingEngine", "TimingResult", "simulate_timing", "DEFAULT_PARAM_BYTES"]

DEFAULT_PARAM_BYTES = 340_000.0  # ~85k float32 parameters, a small MLP
_INF = math.inf


@dataclass
class TimingResult:
    trace: Trace
    stopped: str  # until_updates | until_time | deadlock | stalled
    sim_time: float
    wall_time_s: float
    updates: int
    busy: list[float]
    deadlock: list[str] = field(default_factory=list)


class TimingEngine:
    """Builds the SimPy model of one scenario; ``run()`` returns its trace.

    The server's side of the algorithm is a policy (`asgd_sim.algorithms`): after each push the
    engine asks it what to do and carries out its decisions on the simulated clock (`_carry_out`).
    """

    def __init__(self, scenario: Scenario, param_bytes: float | None = None, loop: str = "auto") -> None:
        self.scenario = sc = scenario
        self.env = env = simpy.Environment()
        self.policy: ServerPolicy = make_policy(sc)
        self.M = sc.num_workers
        self.S = sc.server.shards
        self.param_bytes = float(param_bytes if param_bytes is not None else (sc.model.param_bytes or DEFAULT_PARAM_BYTES))
        self.msg_bytes = sc.message_bytes(self.param_bytes)
        self.local_steps = self.policy.local_steps
        self.may_drop = self.policy.may_drop
        self.trace = TraceBuilder(self.S)
        self.server = ParameterServer(env, self.S, sc.server.lock, sc.server.lock_fifo,
                                      stream(sc.run.seed, SERVER, 3) if sc.server.lock_fifo < 1.0 else None)
        self.apply_time = Sampler(sc.server.apply_time, stream(sc.run.seed, SERVER, 0))
        self.order_rng = stream(sc.run.seed, SERVER, 1)
        self.lock_handoff = Sampler(sc.server.lock_handoff, stream(sc.run.seed, SERVER, 2))
        self.workers = build_workers(sc, sc.network.latency)
        self.bandwidth = sc.network.bandwidth
        self.shares = FairShare(env)
        self._build_routes()
        self.updates = 0  # logical updates: the slowest shard's version
        self.pushes = 0  # server requests (Apply decisions) so far: the trace's push numbers
        self.until_updates = sc.run.until_updates if sc.run.until_updates is not None else _INF
        self.until_time = sc.run.until_time if sc.run.until_time is not None else _INF
        self.stopped = ""
        self.deadlock: list[str] = []
        if loop == "callbacks" or (loop == "auto" and callbacks_suffice(sc, self.workers)):
            self.loop: ProcessLoop | CallbackLoop = CallbackLoop(self, self.workers)
        else:
            self.loop = ProcessLoop(self, self.workers, self.shares, self.msg_bytes)
        self.callbacks = isinstance(self.loop, CallbackLoop)
        self.rw = sc.server.lock == "rw"  # (only then does a write hold up reads)
        self.quiet_updates = _quiet_updates(self.policy)
        if self.S == 1 and _applies_alone(self.policy):
            self.serve = self._serve_alone  # type: ignore[method-assign]
        self.loop.start()

    def _build_routes(self) -> None:
        """The shared resources of the workers whose times depend on others: the links messages
        cross (each worker's uplink and downlink, each shard's NIC per direction; a worker's own
        links carry one message at a time) and the devices, each a link of ``capacity``
        computations that each run at most at full speed (1)."""
        sc, shares = self.scenario, self.shares
        pulls = pushes = [None] * self.M
        if sc.has_transfer_time:
            up = [shares.add_link(sc.network.bandwidth, shared=False) for _ in self.workers]
            down = [shares.add_link(sc.network.bandwidth, shared=False) for _ in self.workers]
            nic_in = [shares.add_link(sc.network.server_bandwidth) for _ in range(self.S)]
            nic_out = [shares.add_link(sc.network.server_bandwidth) for _ in range(self.S)]
            pulls = [shares.route([((nic_out[s], down[w]), math.inf) for s in range(self.S)]) for w in range(self.M)]
            pushes = [shares.route([((up[w], nic_in[s]), math.inf) for s in range(self.S)]) for w in range(self.M)]
        on = [sc.workers[w.group].device for w in self.workers]
        devices = {}
        for device in sc.devices:
            users = on.count(device.name)
            # Never over-subscribed when its workers at full speed fit in it: then it adds no contention.
            link = shares.add_link(device.capacity, shared=users * min(1.0, device.capacity) > device.capacity)
            devices[device.name] = shares.route([((link,), 1.0)])
        for w, device, pull, push in zip(self.workers, on, pulls, pushes):
            if pull is not None or device is not None:
                w.routes = Routes(pull, push, devices[device] if device is not None else None)

    # ---- server: reads and applies -----------------------------------------------------------

    def serve(self, w: WorkerState, gids: list[int]) -> Generator:
        """The server's answer to ``w``'s push of ``gids``: the policy's decisions, carried out."""
        return self._carry_out(w, gids, self.policy.push(w.wid, gids), self.env.now)

    def _serve_alone(self, w: WorkerState, gids: list[int]) -> Generator:
        """`serve` for a policy that applies every push alone and then serves its pusher (async,
        EASGD: `_applies_alone`), on one shard: what `_carry_out` does with its ``[Apply(gids)]``
        and ``[Serve([w])]``, without building, noting and dispatching the decisions: a dozen
        calls and objects per update, on the path most simulated updates take. The policy's state
        is noted as `ServerPolicy.push` would (its worker at the server); `_commit` tells it each
        update."""
        self.policy.state[w.wid] = AT_SERVER
        w.arrived = self.env._now  # type: ignore[attr-defined]
        push, self.pushes = self.pushes, self.pushes + 1
        yield from self._apply(self.server.shards[0], gids, [1.0] * len(gids), w.wid, push)
        self._piggyback(w)

    def read(self) -> Generator:
        """Serve a read of every shard (with an rw lock, after any write in progress)."""
        if self.server.lock_policy == "rw":
            for shard in self.server.shards:
                yield from self.server.wait_readable(shard)
        return self.server.versions()

    def _apply(self, shard: Shard, members: list[int], weights: list[float], requester: int, push: int) -> Generator:
        """Apply one update of ``shard`` combining gradients ``members``: lock, drop-stale, hold.
        ``push`` numbers the request (see `_apply_all`)."""
        lock = shard.lock
        t_request = self.env._now  # type: ignore[attr-defined]  (env.now is a property: a call per read)
        if lock is not None:
            granted = lock.acquire(requester)
            if granted is not None:
                yield granted
                yield from self._handed_over()
        t_lock = self.env._now  # type: ignore[attr-defined]
        if self.may_drop:
            members, weights = self._drop_stale(shard, members, weights, t_lock)
        if members:
            if self.rw:
                self.server.begin_write(shard)
            hold = self.apply_time()
            if hold > 0:
                yield Timeout(self.env, hold, 1)
            self._commit(shard, members, weights, t_request, t_lock, push)
            if self.rw:
                self.server.end_write(shard)
        if lock is not None:
            lock.release()

    def _handed_over(self) -> Generator:
        """A lock was handed to a waiting request: it starts ``server.lock_handoff`` later."""
        handoff = self.lock_handoff()
        if handoff > 0:
            yield Timeout(self.env, handoff, 1)

    def _drop_stale(self, shard: Shard, members: list[int], weights: list[float], t_lock: float) -> tuple[list[int], list[float]]:
        """Drop the gradients the policy does not keep at this staleness on this shard."""
        tr, s, S, keep = self.trace, shard.index, self.S, self.policy.keep
        kept: tuple[list[int], list[float]] = ([], [])
        for g, weight in zip(members, weights):
            stale = shard.version - tr.read_version[g * S + s]
            if not keep(stale):
                tr.record_drop(g, stale, t_lock)
            else:
                kept[0].append(g)
                kept[1].append(weight)
        return kept

    def _commit(self, shard: Shard, members: list[int], weights: list[float], t_request: float, t_lock: float,
                push: int) -> None:
        """The update lands: bump the shard's version and record it in the trace."""
        before = shard.version
        shard.version = before + 1
        self.server.versions_changed()
        now = self.env._now  # type: ignore[attr-defined]
        if len(members) == 1:
            self.trace.record_apply_one(shard.index, before, t_request, t_lock, now, members[0], weights[0], push)
        else:
            self.trace.record_apply(shard.index, before, t_request, t_lock, now, members, weights, push)
        logical = before + 1 if self.S == 1 else min(sh.version for sh in self.server.shards)
        if logical > self.updates:
            self.updates = logical
            if self.quiet_updates:  # (`ServerPolicy.updated` would note the version and decide nothing)
                self.policy.version = logical
                return
            decisions = self.policy.updated(logical)
            if decisions:  # (e.g. Ringmaster's stops) about other workers: nothing here waits
                for _ in self._carry_out(None, [], decisions, self.env.now):
                    raise TypeError(f"{type(self.policy).__name__}.on_update may decide Serve, Read, Stop or Cancel only")

    def _apply_all(self, members: list[int], weights: list[float], requester: int) -> Generator:
        """Apply an update to every shard: in parallel, or atomically holding all their locks.

        The request gets the next push number; its S update rows carry it, so lock waits can be
        measured per push (request to holding every lock it needs), not per shard row."""
        shards = self.server.shards
        push, self.pushes = self.pushes, self.pushes + 1
        if self.S == 1:
            yield from self._apply(shards[0], members, weights, requester, push)
        elif self.scenario.server.atomic and self.server.lock_policy in ("shard", "rw"):
            yield from self._apply_atomic(members, weights, requester, push)
        else:
            yield self.env.all_of([self.env.process(self._apply(sh, members, weights, requester, push)) for sh in shards])

    def _apply_atomic(self, members: list[int], weights: list[float], requester: int, push: int) -> Generator:
        shards = list(self.server.shards)
        t_request = self.env.now
        if self.scenario.server.lock_order == "random":
            shards = [shards[i] for i in self.order_rng.permutation(len(shards))]
        for shard in shards:
            granted = shard.lock.acquire(requester)  # type: ignore[union-attr]
            if granted is not None:
                yield granted
                yield from self._handed_over()
        t_lock = self.env.now
        for shard in sorted(shards, key=lambda sh: sh.index):
            kept, kept_weights = self._drop_stale(shard, members, weights, t_lock) if self.may_drop else (members, weights)
            if kept:
                self.server.begin_write(shard)
                hold = self.apply_time()
                if hold > 0:
                    yield Timeout(self.env, hold, 1)
                self._commit(shard, kept, kept_weights, t_request, t_lock, push)
                self.server.end_write(shard)
        for shard in shards:
            shard.lock.release()  # type: ignore[union-attr]

    def _piggyback(self, w: WorkerState, t_pull: float | None = None) -> None:
        """Serve ``w``'s read now, in the process at hand (its push carried the pull request)."""
        now = self.env._now  # type: ignore[attr-defined]
        w.next_read = (now if t_pull is None else t_pull, now, self.server.versions())
        self.policy.read(w.wid)

    # ---- the server's answer to a push: the policy's decisions --------------------------------

    def _carry_out(self, w: WorkerState | None, gids: list[int], decisions: list, t_arrive: float) -> Generator:
        """Carry out ``decisions`` (about ``w``'s push of ``gids``; None: an update landed) in order,
        in ``w``'s process.

        Other workers are reached through their wake events: a held or stopped worker resumes once
        it is served (`Serve`: its read was done here) or released to read for itself (`Read`).
        A worker that the policy names but that is not waiting (it was mid-read when its round
        closed, so it could not be stopped) is left to finish what it is doing.
        """
        if w is not None:
            w.arrived = t_arrive
        for decision in decisions:
            kind = type(decision)
            if kind is Apply:
                yield from self._apply_all(decision.gids, decision.weights, w.wid)
                yield from self._carry_out(w, gids, self.policy.applied(w.wid), t_arrive)
            elif kind is Serve:
                self._serve(w, decision.workers, decision.pull)
            elif kind is Read:
                for wid in decision.workers:
                    other = self.workers[wid]
                    if other is w:
                        yield from self._read_for(w, decision.pull)
                    elif other.waiting:
                        other.waiting = False
                        other.read_on_wake = decision.pull
                        self.loop.served_other()
                        other.wake.succeed()  # type: ignore[union-attr]
            elif kind is Hold:
                w.wake = self.env.event()
                w.waiting, w.held_since = True, self.env.now
                yield w.wake
                if w.read_on_wake:
                    pull, w.read_on_wake = w.read_on_wake, ""
                    yield from self._read_for(w, pull)
            elif kind is Pull:
                w.next_read = None
            elif kind is Keep:
                tr, g = self.trace, gids[0]
                w.next_read = (tr.t_pull[g], tr.t_read[g], list(tr.read_version[g * self.S:(g + 1) * self.S]))
                w.has_params = True
            elif kind is Cancel:
                for gid in decision.gids:
                    self.trace.fate[gid] = CANCELLED
            elif kind is Stop:
                if self.callbacks:
                    self.loop.stop_many(decision.workers)  # type: ignore[union-attr]
                else:
                    for wid in decision.workers:
                        other = self.workers[wid]
                        if other.alive and other.interruptible:
                            self.loop.stop(other)
            else:
                raise TypeError(f"{type(self.policy).__name__} returned {decision!r}, which is not a decision")

    def _serve(self, w: WorkerState | None, wids: list[int], pull: str) -> None:
        """Serve ``wids`` in order: the pusher ``w`` and every held or stopped worker among them
        reads now, and the held or stopped ones resume. With callbacks, each row of stopped workers
        is served in one step (`CallbackLoop.resume_many`, `ServerPolicy.read_many`)."""
        if self.callbacks and pull == "read" and len(wids) >= CallbackLoop.BULK:
            named = worker_array(wids)
            stopped = self.loop.resumable(named)  # type: ignore[union-attr]
            if stopped is not None:
                lo = 0
                for i in [*np.flatnonzero(~stopped).tolist(), len(named)]:
                    if i > lo:
                        self._resume_many(named[lo:i])
                    if i < len(named):
                        self._serve_one(w, self.workers[wids[i]], pull)
                    lo = i + 1
                return
        for wid in wids:
            self._serve_one(w, self.workers[wid], pull)

    def _serve_one(self, w: WorkerState | None, other: WorkerState, pull: str) -> None:
        loop = self.loop
        stopped = other is not w and loop.resumes(other)
        if other is w or other.waiting or stopped:
            self._piggyback(other, other.arrived if pull == "arrival" else None)
            if other is not w:
                other.waiting = False
                if stopped:
                    loop.resume(other)  # (stopped workers restart together)
                else:
                    loop.served_other()
                    other.wake.succeed(RESTARTED)  # type: ignore[union-attr]

    def _resume_many(self, wids: np.ndarray) -> None:
        """`_serve_one` for stopped workers ``wids`` (distinct), served in a row."""
        now = self.env.now
        read = (now, now, self.server.versions())
        self.policy.read_many(wids)
        self.loop.resume_many(wids, read)  # type: ignore[union-attr]

    def _read_for(self, w: WorkerState, pull: str) -> Generator:
        """``w`` reads for itself: a request served as it arrives (rw: after a write in progress)."""
        t_pull = w.arrived if pull == "arrival" else w.held_since
        versions = yield from self.read()
        w.next_read = (t_pull, self.env.now, versions)
        self.policy.read(w.wid)

    # ---- running -----------------------------------------------------------------------------

    def step_until(self, updates: float = _INF, progress: Callable[[int, float], None] | None = None) -> bool:
        """Advance until ``updates`` logical updates (or a stop); False once the run has stopped."""
        with fewer_collections():
            return self._step_until(updates, progress)

    def _step_until(self, updates: float, progress: Callable[[int, float], None] | None) -> bool:
        env = self.env
        step, queue = env.step, env._queue  # type: ignore[attr-defined]
        target = min(updates, self.until_updates)
        until_time = self.until_time
        count = 0
        while self.updates < target:
            t = queue[0][0] if queue else _INF  # (env.peek(), without a call per event)
            if t == _INF:
                self._diagnose_stop()
                return False
            if t > until_time:
                env._now = until_time  # type: ignore[attr-defined]
                self.stopped = "until_time"
                return False
            step()
            count += 1
            if progress is not None and count & 4095 == 0:
                progress(self.updates, env.now)
        if self.updates >= self.until_updates:
            self.stopped = "until_updates"
            return False
        return True

    def _diagnose_stop(self) -> None:
        edges, notes = self.server.wait_for_graph()
        cycle = find_wait_cycle(edges)
        if cycle:
            self.stopped = "deadlock"
            self.deadlock = [f"worker {w}: " + ", ".join(notes.get(w, [])) for w in cycle[:-1]]
        else:
            self.stopped = "stalled"

    def run(self, progress: Callable[[int, float], None] | None = None) -> TimingResult:
        started = time.perf_counter()
        if not self.stopped:
            self.step_until(progress=progress)
        return self.result(time.perf_counter() - started)

    def result(self, wall_time_s: float = 0.0) -> TimingResult:
        if self.callbacks:
            self.loop.table.sync()  # type: ignore[union-attr]
        trace = self.freeze(trace_meta(self.scenario, self.stopped, self.env.now, param_bytes=self.param_bytes))
        return TimingResult(trace=trace, stopped=self.stopped or "running", sim_time=float(self.env.now),
                            wall_time_s=wall_time_s, updates=self.updates, busy=[self._busy_so_far(w) for w in self.workers],
                            deadlock=list(self.deadlock))

    def freeze(self, meta: dict | None = None, *, copy: bool = True) -> Trace:
        """The trace so far (``copy`` as in `TraceBuilder.freeze`). An iteration in stages lays out
        its computations ahead of time: only what has happened by now is kept (as a step-by-step
        loop would have stamped it)."""
        trace = self.trace.freeze(meta, copy=copy)
        for w in self.workers:
            if w.chain is not None:
                w.chain.clip(trace.times, self.env.now)
        return trace

    def _busy_so_far(self, w: WorkerState) -> float:
        """Compute time up to now: ``w.busy`` also holds the scheduled rest of the compute in
        progress (recorded in full when it starts), which lies after the end of the run."""
        tr, now, busy = self.trace, self.env.now, w.busy
        on_device = w.routes is not None and w.routes.device is not None
        if w.chain is not None:  # an iteration in stages: its computations count once they start
            if not tr.t_compute_start[w.chain.gids[0]] <= now:
                return busy
            busy = w.chain.busy(busy)
        for gid in w.unpushed:
            start, end = tr.t_compute_start[gid], tr.t_compute_end[gid]
            if end > now:  # (False for NaN: not started)
                busy -= end - max(start, now)
            elif on_device and end != end and start <= now:  # running on a device, its end not known yet
                busy += now - start
        return busy


def _applies_alone(policy: ServerPolicy) -> bool:
    """Whether ``policy`` answers every push as `AsyncPolicy` does, [Apply(its gradients, weight 1)]
    then [Serve([its pusher])], notes no more than `ServerPolicy` does, and decides nothing when
    an update lands: then `TimingEngine._serve_alone` carries out its answers."""
    cls = type(policy)
    return (cls.on_push is AsyncPolicy.on_push and cls.on_applied is AsyncPolicy.on_applied and _quiet_updates(policy)
            and cls.push is ServerPolicy.push and cls.applied is ServerPolicy.applied)


def _quiet_updates(policy: ServerPolicy) -> bool:
    """Whether ``policy`` only notes the version when an update lands (`ServerPolicy.updated` as it
    is, no `on_update`): then `TimingEngine._commit` notes it without the call."""
    cls = type(policy)
    return (cls.updated is ServerPolicy.updated and cls.on_update is ServerPolicy.on_update
            and cls._noted is ServerPolicy._noted)


YOUNG_COLLECTION_THRESHOLD = 100_000  # allocations between young collections while an engine runs


@contextmanager
def fewer_collections(freeze: bool = False) -> Iterator[None]:
    """Run the cyclic garbage collector less often while a run's events are processed: a run
    allocates millions of short-lived events and tuples, no cycles among them, and with Python's
    default thresholds (a young collection every 700 allocations) collections took ~30 % of a run
    that restarts thousands of workers per round. Young collections wait for 100,000 allocations;
    cycles the run makes are still collected, later. The thresholds are restored after.

    ``freeze`` (a whole run, `runner.simulate` and `runner.run_timing`): the objects alive before
    it are also frozen (`gc.freeze`: never scanned, never freed, until `gc.unfreeze` at the end
    puts them back). Full collections scan every object alive, JAX's included (~0.2 s each):
    measured with `gc.callbacks` on the Ringmaster paper's scenario (n = 6,174, 42,000 asynchronous
    updates, 2.5 s), 0.39 s of collections, nearly all full ones (building 6,174 workers' state set
    one off before the first event), and 0.02 s with the objects frozen.
    """
    thresholds = gc.get_threshold()
    if freeze:
        gc.freeze()
    gc.set_threshold(max(thresholds[0], YOUNG_COLLECTION_THRESHOLD), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()


def simulate_timing(scenario: Scenario, param_bytes: float | None = None,
                    progress: Callable[[int, float], None] | None = None) -> TimingResult:
    """Run the timing engine alone (no JAX): the trace of a scenario."""
    return TimingEngine(scenario, param_bytes).run(progress)
