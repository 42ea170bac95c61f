"""A real, thread-safe parameter server: the simulator's semantics on a real clock.

The timing engine (`asgd_sim.timing.engine`) decides in simulated time who reads which version and
when each update lands; this server does the same things for real, from worker threads (the
devices backend) or from a threaded Ray actor (the Ray backend), and writes the *same* trace
(`asgd_sim.trace`), so the summary, the plots and `asgd_sim.replay` work unchanged. Both drive the
same server policy (`asgd_sim.algorithms`): this server holds no algorithm of its own; it carries
out the policy's decisions with threads, mutexes and device work (`_carry_out`).

Parameters use the numerics engine's layout (`asgd_sim.numerics.layout.Layout`), each shard row
with its own version and optimizer state. An update of shard s is one jitted call on that row of
the numerics engine's own arithmetic for the policy's kind of model update (`backends.updates`:
the server rule over gradients or one pseudo-gradient per push, FedAsync's mix, EASGD's elastic
exchange), so a replay of the real trace recomputes the real parameters. The write path (locks,
drop-stale, commit) is `backends.writes`; where the rows live and where that call runs is a shard
store's business (`backends.shards`: this process, or one Ray actor per shard).

Workers that take local steps (local SGD, EASGD, FedBuff, FedAsync) push once per ``local_steps``
gradient rows, shipping under the push's first row what the update needs (`backends.worker`).
EASGD's workers keep their own models x_i here (per worker and shard): a worker's read returns its
x_i, while the trace records the center's versions, as the simulator does.

Pinned semantics, as in the simulator (docs/DESIGN.md "Semantics"):
- A read is recorded when the server serves it; its versions are those of the rows it returns
  (one consistent (row, version) pair per shard, taken under the state lock).
- Staleness of a gradient on a shard = the shard's version just before the update minus the
  version read (max over shards); drop-stale compares the same difference at lock time.
- When the policy serves a worker (after its push is applied, included in an update or
  received, as the algorithm says), its next read is served at once (piggybacked on the push).
- Locks (`server.lock`): "shard" a mutex per shard, "global" one mutex, "rw" a per-shard mutex
  whose writes also hold reads back, "none" no modelled lock. A JAX array is immutable, so the
  arithmetic of one update (read row -> apply -> swap) is always atomic per shard: like the
  simulator's lock-free server, no update is lost. `atomic = true` takes all shard locks in sorted
  order (a random order could deadlock a real server: simulate that instead).
- The run stops at `run.until_updates` logical updates (the slowest shard's version) or at
  `run.until_time` seconds: nothing commits after the stop, so gradients still in flight stay
  pending, exactly like a simulated run cut at that instant.

Threads: the policy is called under one condition variable (it is not thread-safe itself), and
what its decisions register (a held worker's wake event, a stopped worker's cancel flag) is
registered under that same acquisition, so a decision from another thread never misses it. Shard
locks are taken without it; the state lock (trace rows, shard rows and versions) is the innermost
and is held only for pointer swaps and trace writes. After each commit that raises the logical
version the committing thread tells the policy (`ServerPolicy.updated`, every version once and in
order, under the condition variable and outside the state lock, once the shard's write is over)
and carries out what it decides: Ringmaster's stops, whose workers notice their cancel flag and
take the read served with the stop. A stopped worker's push that arrives before it noticed is
discarded (the check and the policy's push event are one step under the condition variable).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ..errors import ScenarioError
from ..algorithms import Apply, Cancel, Decision, Hold, Keep, Pull, Read as ReadFor, Serve, Stop, make_policy
from ..numerics.layout import Layout
from ..numerics.rules import make_server_rule
from ..scenario.config import Scenario
from ..timing.workers import SERVER, Sampler, stream
from ..trace import CANCELLED, PENDING, Trace, TraceBuilder, trace_meta
from . import check_supported
from .shards import LocalShards, ShardStore
from .updates import RULE_UPDATES, ShardMath
from .writes import ShardSlot, ShardWrites, Stopped

__all__ = ["Clock", "Read", "RealServer", "freeze_collector"]


def freeze_collector() -> None:
    """Collect, then freeze every object alive (`gc.freeze`): call it as a real run's clock starts.

    A full (generation 2) collection scans every object alive, JAX's and the problem's included:
    measured at 57-110 ms each during a 1.4 s devices-backend run of 7 worker threads, stopping
    every thread at once (it holds the GIL) and putting a 99-140 ms stall into the trace, 7 % of
    the run, that no simulation of the scenario has. Frozen objects are never scanned again, so
    the collections that remain look only at what the run itself allocates.
    """
    gc.collect()
    gc.freeze()


class Clock:
    """Seconds since the run started, from `time.monotonic()` (plus an offset after a resume)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.origin = time.monotonic() - offset

    def now(self) -> float:
        return time.monotonic() - self.origin

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))


@dataclass(frozen=True)
class Read:
    """What a worker got from the server: when, which versions, and the rows."""

    t_pull: float
    t_read: float
    versions: tuple[int, ...]
    rows: tuple[Any, ...]
    has_params: bool = False  # the worker keeps computing on the parameters it holds (K-batch-sync)


@dataclass(eq=False)
class _Slot:
    """The server's view of one worker."""

    wid: int
    wake: threading.Event = field(default_factory=threading.Event)
    waiting: bool = False  # held or stopped by the policy, until it is served or released
    read_on_wake: str = ""  # released to read for itself: the pull time to record ("held" | "arrival")
    next_read: Read | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # its computation was stopped
    alive: bool = True
    arrived: float = 0.0  # when its last push arrived
    held_since: float = 0.0  # when the policy last held it


class RealServer(ShardWrites):
    """Shards, locks, algorithm and trace of a real run (see the module docstring).

    `store` holds the shard rows and runs the updates (default: `LocalShards` on `device`).
    `resume` is a loaded `backends.checkpoint.Checkpoint`. `on_checkpoint(snapshot)` is called
    (outside all locks, from the committing thread) every `server.checkpoint_every` updates.
    """

    def __init__(self, scenario: Scenario, layout: Layout, *, device: Any = None, emulate: bool = False,
                 clock: Clock | None = None, resume: Any = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None, store: ShardStore | None = None) -> None:
        check_supported(scenario, "real")
        self.scenario = sc = scenario
        self.layout = layout
        self.device = device if device is not None else jax.devices()[0]
        self.emulate = emulate
        self.policy = make_policy(sc)
        self.M, self.S = sc.num_workers, sc.server.shards
        self.G = self.policy.gradients_per_update
        self.model_update = self.policy.model_update
        self.may_drop = self.policy.may_drop
        self.until_updates = sc.run.until_updates if sc.run.until_updates is not None else math.inf
        self.until_time = sc.run.until_time if sc.run.until_time is not None else math.inf
        self.rule = make_server_rule(sc.optimizer, self.M)
        self.apply_time = Sampler(sc.server.apply_time, stream(sc.run.seed, SERVER, 0))
        self._sample_lock = threading.Lock()
        self.clock = clock or Clock()
        self.state_lock = threading.Lock()
        self.cond = threading.Condition()
        self.gate = threading.Condition()  # rw: reads wait here for writes in progress
        policy = sc.server.lock
        self.lock_policy = policy
        global_lock = threading.Lock() if policy == "global" else None
        self.store: ShardStore = store if store is not None else LocalShards(
            ShardMath(self.rule, self.G, self.model_update, sc.algorithm), self.device)
        # DC-ASGD: the server holds the rows each gradient was computed at, unless the store takes
        # them from the workers (shard actors: the rows travel with the gradient chunks).
        self.needs_read = self.rule.needs_read_params and not self.store.reads_from_workers \
            and self.model_update in RULE_UPDATES
        self.shards = [ShardSlot(s, row, state,
                                 global_lock if policy == "global" else (threading.Lock() if policy in ("shard", "rw") else None))
                       for s, (row, state) in enumerate(self.store.init(layout.initial))]
        # EASGD: each worker's own model x_i, per shard (row handles; a worker's reads return it).
        self.models = [[sh.row for sh in self.shards] for _ in range(self.M)] if self.model_update == "elastic" else None
        self.unsettled: dict[int, dict[int, Any]] = {}  # EASGD: a push dropped as too stale on some shards
        self.trace = TraceBuilder(self.S)
        self.slots = [_Slot(w) for w in range(self.M)]
        self.next_k = [0] * self.M
        # Run state (under self.state_lock).
        self.grads: dict[int, tuple] = {}  # pushed gradients not yet applied or dropped
        self.reads: dict[int, tuple] = {}  # DC-ASGD: the rows each pushed gradient was computed at
        self.uses: dict[int, int] = {}  # shards that have still to apply (or drop) each pushed gradient
        self.updates, self.pushes = 0, 0  # logical updates; server requests so far (the trace's push numbers)
        self.delivered = 0  # the logical versions the policy has been told of (`_deliver_updates`)
        self.stopped = ""
        self.stop_time = math.nan
        self.done = threading.Event()
        self.last_update_time = 0.0
        self.failures: list[dict[str, Any]] = []
        self.eval_every = max(1, sc.run.eval_every)
        self.snapshots: list[tuple[int, float, tuple, int]] = []  # (logical update, time, rows, update rows so far)
        self.checkpoint_every = getattr(sc.server, "checkpoint_every", None)
        self.on_checkpoint = on_checkpoint
        self.resumed_from: dict[str, Any] | None = None
        self._pool = ThreadPoolExecutor(max_workers=self.S * 2, thread_name_prefix="shard") if self.S > 1 else None
        if resume is not None:
            self._restore(resume)
        self.snapshots.append((self.updates, self.clock.now() if resume is not None else 0.0,
                               tuple(sh.row for sh in self.shards), self.trace.num_update_rows))
        self.last_checkpoint = self.updates

    def warm_up(self) -> None:
        """Compile the update before the clock starts (the first real update must not pay for it)."""
        self.store.warm_up()

    # ---- reads and gradient rows ----------------------------------------------------------------

    def _snapshot(self, t_pull: float | None) -> Read:
        """Serve a read of every shard now (rw: after any write in progress)."""
        if self.lock_policy == "rw":
            with self.gate:
                while any(sh.writing for sh in self.shards) and not self.stopped:
                    self.gate.wait(0.05)
        with self.state_lock:
            now = self.clock.now()
            versions = tuple(sh.version for sh in self.shards)
            rows = tuple(sh.row for sh in self.shards)
        # (A remote worker's clock is the server's to within half a round trip: a pull it stamps
        # a few microseconds after the server served it was sent before.)
        return Read(now if t_pull is None else min(t_pull, now), now, versions, rows)

    def read(self, wid: int, t_pull: float) -> Read | None:
        """An explicit pull (the first one, or after a restart), served now (None: the run is over)."""
        if self.stopped:
            return None
        with self.cond:
            self.policy.read(wid)
        return self._own(wid, self._snapshot(t_pull))

    def _own(self, wid: int, read: Read) -> Read:
        """EASGD: a worker reads its own model x_i (the trace records the center's versions). Its
        x_i changes only while its push is at the server (its exchange), never while it is served."""
        if self.models is None:
            return read
        return dataclasses.replace(read, rows=tuple(self.models[wid]))

    def new_gradients(self, wid: int, count: int, read: Read) -> list[tuple[int, int]]:
        """Trace rows for the worker's next ``count`` gradients at ``read``: [(gid, k)]."""
        with self.state_lock:
            out = []
            for step in range(count):
                k = self.next_k[wid]
                self.next_k[wid] = k + 1
                out.append((self.trace.new_gradient(wid, k, step, read.t_pull, read.t_read, list(read.versions)), k))
            return out

    def record_compute(self, gid: int, start: float, end: float) -> None:
        with self.state_lock:
            self.trace.t_compute_start[gid] = start
            self.trace.t_compute_end[gid] = end

    def cancel(self, wid: int, gids: Sequence[int]) -> None:
        """The worker's gradients in progress are lost (a failure, or its round closed)."""
        lost = []
        with self.state_lock:
            now = self.clock.now()
            tr = self.trace
            for gid in gids:
                if tr.fate[gid] != PENDING or not math.isnan(tr.t_arrive[gid]):
                    continue
                tr.fate[gid] = CANCELLED
                lost.append(gid)
                start, end = tr.t_compute_start[gid], tr.t_compute_end[gid]
                if not math.isnan(start) and (math.isnan(end) or end > now):
                    tr.t_compute_end[gid] = now
        self.store.discard(lost)  # (a worker may have shipped a gradient it never pushed)

    # ---- failures -----------------------------------------------------------------------------

    def worker_failed(self, wid: int, gids: Sequence[int], error: BaseException, restart_after: float | None) -> None:
        """Record a worker's crash (an exception in its thread, a dead actor); cancel its work
        (every gradient of the worker not yet pushed, whether or not the caller knows its ids)."""
        if self.stopped:
            return
        with self.state_lock:
            mine = np.flatnonzero(np.frombuffer(self.trace.worker, np.int32)[:self.trace.num_gradients] == wid).tolist()
        self.cancel(wid, sorted(set(gids) | set(mine)))
        now = self.clock.now()
        with self.cond:
            self.slots[wid].alive = False  # (SSP: its clock stays, holding the others back, as in the simulator)
            self.policy.failed(wid)
        with self.state_lock:
            self.failures.append({"worker": wid, "t": round(now, 6), "error": f"{type(error).__name__}: {error}"[:200],
                                  "restart_after": restart_after})

    def worker_restarted(self, wid: int) -> None:
        now = self.clock.now()
        with self.cond:
            slot = self.slots[wid]
            slot.alive = True
            slot.cancel.clear()
            self.policy.restarted(wid)
        with self.state_lock:
            for f in reversed(self.failures):
                if f["worker"] == wid and "restarted" not in f:
                    f["restarted"] = round(now, 6)
                    break

    # ---- push: the policy's decisions, carried out ---------------------------------------------

    def push(self, wid: int, gids: list[int], grads: list[tuple], reads: tuple | None, read: Read) -> Read | None:
        """A worker's gradients (per gid, a tuple of shard rows on the server device; for local
        steps, one payload for the push) arrive.

        Returns the worker's next read, or None when it must pull explicitly (its gradients were
        cancelled by a round that closed without them) or the run is over.
        """
        if self.stopped:
            return None
        with self.state_lock:
            now = self.clock.now()
            for gid in gids:
                # A remote worker stamps its compute end on its clock, synchronised to the
                # server's to within half the round trip measured at start (more on a loaded
                # host): a push never arrives before the compute it carries ended.
                self.trace.t_arrive[gid] = max(now, self.trace.t_compute_end[gid])
            for gid, g in zip(gids, grads):  # (local steps: one payload, under the push's first row)
                self.grads[gid] = g
                self.uses[gid] = self.S
                if reads is not None:
                    self.reads[gid] = reads
        slot = self.slots[wid]
        slot.arrived = now
        with self.cond:  # (one step with the check: a stop decided meanwhile cannot slip between them)
            stopped = slot.cancel.is_set()
            decisions = [] if stopped else self._register(slot, self.policy.push(wid, gids))
        if stopped:  # stopped while it finished (a stop lands at once only in the simulator):
            self._cancel_gradients(gids)  # the computation is discarded; the policy already serves it anew
            return self.await_broadcast(wid)
        try:
            return self._carry_out(slot, read, decisions)
        except Stopped:
            return None

    def _decide(self, slot: _Slot, event: Any, *args: Any) -> list[Decision]:
        """Deliver ``event`` to the policy and register what its decisions promise, atomically
        (under the condition variable): a held worker's wake event, a stopped worker's cancel flag.
        Another thread's Serve or Read can then never miss them."""
        with self.cond:
            return self._register(slot, event(slot.wid, *args))

    def _register(self, slot: _Slot | None, decisions: list[Decision]) -> list[Decision]:
        """(Under the condition variable.) What ``decisions`` promise: ``slot`` held, workers stopped."""
        for decision in decisions:
            if type(decision) is Hold and slot is not None:
                slot.wake, slot.waiting, slot.read_on_wake = threading.Event(), True, ""
                slot.held_since = self.clock.now()
            elif type(decision) is Stop:
                for wid in decision.workers:
                    other = self.slots[wid]
                    if other.alive:  # it notices the flag and waits for the broadcast
                        other.wake, other.waiting = threading.Event(), True
                        other.cancel.set()
        return decisions

    def _deliver_updates(self, version: int) -> None:
        """The logical version reached ``version``: tell the policy of every version it has not
        seen, in order (`ServerPolicy.updated`), and carry out what it decides about the workers
        (Ringmaster's stops: Stop, then Serve at the current point). Called by the committing
        thread once its shard's write is over: it may hold that shard's modelled lock, no other."""
        decisions: list[Decision] = []
        with self.cond:
            while self.delivered < version and not self.stopped:
                self.delivered += 1
                decisions += self._register(None, self.policy.updated(self.delivered))
        if decisions:
            try:
                self._carry_out(None, None, decisions)
            except Stopped:
                pass

    def _carry_out(self, slot: _Slot | None, read: Read | None, decisions: list[Decision]) -> Read | None:
        """Carry out the decisions about ``slot``'s push in its thread; its next read (None: it
        pulls explicitly). ``read`` is what the push's gradients were computed at. Without a slot
        (an update landed: `_deliver_updates`), only decisions about other workers are allowed."""
        mine: Read | None = None
        for decision in decisions:
            kind = type(decision)
            if slot is None and kind not in (Serve, ReadFor, Stop, Cancel):
                raise TypeError(f"{type(self.policy).__name__}.on_update may decide Serve, Read, Stop or Cancel only")
            if kind is Apply:
                assert slot is not None
                self._apply_all(decision.gids, decision.weights)
                if self.unsettled:
                    self._settle(decision.gids)
                mine = self._carry_out(slot, read, self._decide(slot, self.policy.applied)) or mine
            elif kind is Serve:
                snapshot = self._snapshot(None)
                with self.cond:
                    for wid in decision.workers:
                        other = self.slots[wid]
                        served = self._own(wid, snapshot if decision.pull == "read" else _pulled_at(snapshot, other.arrived))
                        if other is slot:
                            mine = served
                        elif other.waiting:
                            other.next_read, other.waiting = served, False
                            other.wake.set()
                        else:
                            continue
                        self.policy.read(wid)
            elif kind is ReadFor:
                for wid in decision.workers:
                    if slot is not None and wid == slot.wid:
                        mine = self._read_for(slot, decision.pull)
                    else:
                        with self.cond:
                            other = self.slots[wid]
                            if other.waiting:
                                other.read_on_wake, other.waiting = decision.pull, False
                                other.wake.set()
            elif kind is Hold:
                assert slot is not None
                self._wait(slot.wake)
                if slot.read_on_wake:
                    mine = self._read_for(slot, slot.read_on_wake)
                else:
                    mine = slot.next_read
            elif kind is Pull:  # (a worker a closing round stopped too gets that round's broadcast instead)
                assert slot is not None
                mine = self.await_broadcast(slot.wid) if slot.cancel.is_set() else None
            elif kind is Keep:
                assert read is not None
                mine = dataclasses.replace(read, has_params=True)
            elif kind is Cancel:
                self._cancel_gradients(decision.gids)
            elif kind is not Stop:  # (Stop was registered by `_decide`)
                raise TypeError(f"{type(self.policy).__name__} returned {decision!r}, which is not a decision")
        return mine

    def _read_for(self, slot: _Slot, pull: str) -> Read:
        """The worker reads for itself: its pull was issued when it arrived, or when it was held."""
        served = self._own(slot.wid, self._snapshot(slot.arrived if pull == "arrival" else slot.held_since))
        with self.cond:
            self.policy.read(slot.wid)
        return served

    def _cancel_gradients(self, gids: list[int]) -> None:
        with self.state_lock:
            for gid in gids:
                if self.trace.fate[gid] == PENDING:
                    self.trace.fate[gid] = CANCELLED
                self.grads.pop(gid, None)
                self.reads.pop(gid, None)
                self.uses.pop(gid, None)
        self.store.discard(gids)

    def await_broadcast(self, wid: int) -> Read | None:
        """A worker whose round closed without it waits for that round's broadcast read.

        If the policy stopped it again between the broadcast and this thread's resuming (a new
        wake event: the round it was served closed meanwhile), that read is stale and its stop
        flag is the new round's: it waits for the next broadcast instead. (Clearing the flag and
        computing on the stale read let its gradient into the next round: staleness 1 in Rennala.)
        """
        slot = self.slots[wid]
        while not self.stopped:
            with self.cond:
                wake = slot.wake  # (re-read each time: a stop replaces it)
            if wake.wait(0.1):
                with self.cond:
                    if slot.wake is wake:
                        slot.cancel.clear()
                        return slot.next_read if not self.stopped else None
        return None

    def _wait(self, wake: threading.Event) -> None:
        """Wait for ``wake``; raise `Stopped` once the run is over."""
        while not wake.wait(0.1):
            if self.stopped:
                raise Stopped
        if self.stopped:
            raise Stopped

    # ---- stopping, checkpoints, results ------------------------------------------------------

    def stop(self, reason: str) -> None:
        with self.state_lock:
            self._stop_locked(reason, self.clock.now())

    def _stop_locked(self, reason: str, now: float) -> None:
        if self.stopped:
            return
        self.stopped = reason
        self.stop_time = now if reason != "until_time" else min(now, self.until_time)
        if self.snapshots[-1][0] != self.updates:
            self.snapshots.append((self.updates, now, tuple(x.row for x in self.shards), self.trace.num_update_rows))
        for slot in self.slots:
            slot.wake.set()
            slot.cancel.set()
        self.done.set()

    def _checkpoint_state(self, now: float) -> dict[str, Any]:
        """(Under the state lock.) A consistent cut: rows, optimizer states, versions, trace, k
        (EASGD: the workers' own models)."""
        return {
            "updates": self.updates, "t": now, "versions": [sh.version for sh in self.shards],
            "rows": [sh.row for sh in self.shards], "states": [sh.state for sh in self.shards],
            "models": [list(rows) for rows in self.models] if self.models is not None else None,
            "next_k": list(self.next_k), "trace": self.trace.freeze(trace_meta(self.scenario, "checkpoint", now)),
            "failures": [dict(f) for f in self.failures], "snapshots": [(u, t) for u, t, _, _ in self.snapshots],
        }

    def _restore(self, ckpt: Any) -> None:
        """Continue from a checkpoint: its parameters, optimizer states, versions and trace.

        Gradients in flight at the checkpoint were lost with the process: they are cancelled.
        """
        for sh in self.shards:
            sh.version = int(ckpt.versions[sh.index])
            sh.row, sh.state = self.store.restore(sh.index, sh.version, ckpt.rows[sh.index], ckpt.state_leaves[sh.index])
        if self.models is not None:
            if ckpt.models is None:
                raise ScenarioError("--resume", "the checkpoint holds no worker models (EASGD needs them); start the run afresh")
            self.models = [[self.store.place(s, row) for s, row in enumerate(rows)] for rows in ckpt.models]
        self.trace = ckpt.resumed_trace()
        self.pushes = max(self.trace.u_push, default=-1) + 1
        self.next_k = [int(k) for k in ckpt.next_k]
        self.updates = self.delivered = self.policy.version = int(ckpt.updates)
        self.failures = list(ckpt.failures)
        self.resumed_from = {"updates": int(ckpt.updates), "t": float(ckpt.t)}

    def freeze(self, meta: dict[str, Any]) -> Trace:
        with self.state_lock:
            return self.trace.freeze(meta)

    def final_rows(self) -> tuple:
        """Handles of the final rows (`values` turns handles into arrays)."""
        with self.state_lock:
            return tuple(sh.row for sh in self.shards)

    def values(self, handles: Sequence[Any]) -> tuple:
        """The arrays behind row handles (of a read, a snapshot or `final_rows`)."""
        return tuple(self.store.fetch(handles))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _pulled_at(read: Read, t_pull: float) -> Read:
    """``read`` recorded as pulled at ``t_pull`` (its push carried the request)."""
    return Read(min(t_pull, read.t_read), read.t_read, read.versions, read.rows)
