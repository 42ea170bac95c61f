"""A real, thread-safe parameter server: the simulator's semantics on a real clock.

The timing engine (`asgd_sim.engine`) decides in simulated time who reads which version and when
each update lands; this server does the same things for real, from worker threads (the devices
backend) or from a threaded Ray actor (the Ray backend), and writes the *same* trace
(`asgd_sim.trace`), so `summarize_trace`, the plots and `asgd_sim.simulate.replay` work unchanged.

Parameters use the numerics engine's layout: one flat float32 vector split into S equal shard
rows (padded with zeros no loss touches), each with its own version and its own optimizer state
(`rules.make_server_rule`). An update of shard s is one jitted call of `ServerRule.apply` on that
row with the update's gradients padded to the numerics engine's fixed width G (weight-0 rows),
so a replay of the real trace through the numerics engine recomputes the real parameters (up to
float rounding: the numerics engine computes gradients under `vmap`). Where the rows live and where
that call runs is a shard store's business (`backends.shards`: in this process, or one Ray actor
per shard); the server keeps only handles of the rows and decides everything else.

Pinned semantics, as in the simulator (DESIGN.md "Semantics"):
- A read is recorded when the server serves it; its versions are those of the rows it returns
  (one consistent (row, version) pair per shard, taken under the state lock).
- Staleness of a gradient on a shard = the shard's version just before the update minus the
  version read (max over shards); drop-stale compares the same difference at lock time.
- After its push is applied (async, SSP), included in an update (sync, K-sync, K-async) or
  received (K-batch-async), a worker's next read is served at once (piggybacked on the push).
- Locks (`server.lock`): "shard" a mutex per shard, "global" one mutex, "rw" a per-shard mutex
  whose writes also hold reads back, "none" no modelled lock. A JAX array is immutable, so the
  arithmetic of one update (read row -> apply -> swap) is always atomic per shard: like the
  simulator's lock-free server, no update is lost. `atomic = true` takes all shard locks in sorted
  order (a random order could deadlock a real server: simulate that instead).
- The run stops at `run.until_updates` logical updates (the slowest shard's version) or at
  `run.until_time` seconds: nothing commits after the stop, so gradients still in flight stay
  pending, exactly like a simulated run cut at that instant.

Threads: the algorithm state (buffers, rounds, SSP clocks) lives under one condition variable;
shard locks are taken without it; the state lock (trace rows, shard rows and versions) is the
innermost and is held only for pointer swaps and trace writes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..scenario.config import Scenario
from ..errors import ScenarioError
from ..numerics.rules import make_server_rule
from ..trace import CANCELLED, PENDING, Trace, TraceBuilder
from ..timing.workers import SERVER, Sampler, stream
from .shards import LocalShards, ShardMath, ShardStore

__all__ = ["Clock", "Layout", "Read", "RealServer", "REAL_ALGORITHMS", "check_supported", "members_width"]

# The algorithms the real backends run (local SGD and EASGD keep per-worker models: simulator only).
REAL_ALGORITHMS = ("async", "sync", "k_sync", "k_async", "k_batch_sync", "k_batch_async", "ssp")


class Clock:
    """Seconds since the run started, from `time.monotonic()` (plus an offset after a resume)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.origin = time.monotonic() - offset

    def now(self) -> float:
        return time.monotonic() - self.origin


def check_supported(scenario: Scenario, backend: str) -> None:
    """Reject what the real backends cannot run, naming the key and the alternative."""
    kind = scenario.algorithm.kind
    if kind not in REAL_ALGORITHMS:
        raise ScenarioError("algorithm.kind", f"= {kind!r}: the {backend} backend runs {', '.join(REAL_ALGORITHMS)}; "
                            "simulate local_sgd / easgd with --backend sim")
    if scenario.server.atomic and scenario.server.lock_order == "random" and scenario.server.lock in ("shard", "rw"):
        raise ScenarioError("server.lock_order", "= 'random': a real server taking locks in random order can deadlock "
                            "for good; use 'sorted' on a real backend (or --backend sim to study the deadlock)")


def members_width(scenario: Scenario) -> int:
    """Gradients per update, padded: the numerics engine's G (so the same compiled rule runs)."""
    algo, M = scenario.algorithm, scenario.num_workers
    return {"async": 1, "ssp": 1, "easgd": algo.local_steps, "sync": M - algo.backup,
            "local_sgd": M * algo.local_steps}.get(algo.kind, algo.k)


class Layout:
    """The numerics engine's parameter layout: flat float32, S shard rows of `chunk` values."""

    def __init__(self, problem: Any, shards: int, seed: int) -> None:
        from jax.flatten_util import ravel_pytree

        flat, self.unravel = ravel_pytree(problem.init(jax.random.PRNGKey(seed)))
        self.problem = problem
        self.S = shards
        self.P = int(flat.size)
        self.chunk = -(-self.P // shards)
        padded = np.zeros(shards * self.chunk, np.float32)
        padded[: self.P] = np.asarray(flat, np.float32)
        self.initial = padded.reshape(shards, self.chunk)

    def flat(self, rows: Sequence[Any]) -> np.ndarray:
        """The P parameters of shard rows, as one numpy vector."""
        return np.concatenate([np.asarray(r) for r in rows])[: self.P]

    def pytree(self, rows: Sequence[Any]) -> Any:
        return self.unravel(jnp.asarray(self.flat(rows)))

    def grad_fn(self) -> Callable[[tuple, Any, Any], tuple]:
        """jit: (shard rows, worker, k) -> per-shard gradient rows of the (worker, k) mini-batch."""
        problem, P, S, chunk, unravel = self.problem, self.P, self.S, self.chunk, self.unravel

        def flat_loss(flat: jax.Array, worker: jax.Array, k: jax.Array) -> jax.Array:
            return problem.loss(unravel(flat[:P]), problem.make_batch(worker, k))

        def grads(rows: tuple, worker: jax.Array, k: jax.Array) -> tuple:
            g = jax.grad(flat_loss)(jnp.concatenate(rows), worker, k).reshape(S, chunk)
            return tuple(g[s] for s in range(S))

        return jax.jit(grads)


@dataclass(frozen=True)
class Read:
    """What a worker got from the server: when, which versions, the rows, and for which round."""

    t_pull: float
    t_read: float
    versions: tuple[int, ...]
    rows: tuple[Any, ...]
    round: int = 0
    has_params: bool = False  # k_batch_sync: the worker already holds these parameters


@dataclass(eq=False)
class _Shard:
    index: int
    row: Any  # handles from the shard store (see `backends.shards`)
    state: Any
    lock: threading.Lock | None  # the modelled lock (None: lock-free)
    mutex: threading.Lock = field(default_factory=threading.Lock)  # atomic arithmetic of one update
    version: int = 0
    writing: int = 0  # rw: writes in progress


@dataclass(eq=False)
class _Slot:
    """The server's view of one worker."""

    wid: int
    round: int = 0
    clock: int = 0
    wake: threading.Event = field(default_factory=threading.Event)
    next_read: Read | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # marked by a round closing
    alive: bool = True


class _Stopped(Exception):
    """The run is over: nothing more commits."""


class RealServer:
    """Shards, locks, algorithm and trace of a real run (see the module docstring).

    `store` holds the shard rows and runs the updates (default: `LocalShards` on `device`).
    `resume` is a loaded checkpoint
    (`asgd_sim.checkpoint.Checkpoint`). `on_checkpoint(snapshot)` is called (outside all locks,
    from the committing thread) every `server.checkpoint_every` logical updates.
    """

    def __init__(self, scenario: Scenario, layout: Layout, *, device: Any = None, emulate: bool = False,
                 clock: Clock | None = None, resume: Any = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None, store: ShardStore | None = None) -> None:
        check_supported(scenario, "real")
        self.scenario = sc = scenario
        self.layout = layout
        self.device = device if device is not None else jax.devices()[0]
        self.emulate = emulate
        self.kind = sc.algorithm.kind
        self.M, self.S = sc.num_workers, sc.server.shards
        algo = sc.algorithm
        self.K = {"sync": self.M - algo.backup}.get(self.kind, algo.k)
        self.G = members_width(sc)
        self.drop_above = algo.drop_staleness_above
        self.ssp_bound = algo.staleness_bound
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
        self.store: ShardStore = store if store is not None else LocalShards(ShardMath(self.rule, self.G), self.device)
        # DC-ASGD: the server holds the rows each gradient was computed at, unless the store takes
        # them from the workers (shard actors: the rows travel with the gradient chunks).
        self.needs_read = self.rule.needs_read_params and not self.store.reads_from_workers
        self.shards = [_Shard(s, row, state,
                              global_lock if policy == "global" else (threading.Lock() if policy in ("shard", "rw") else None))
                       for s, (row, state) in enumerate(self.store.init(layout.initial))]
        self.trace = TraceBuilder(self.S)
        self.slots = [_Slot(w) for w in range(self.M)]
        self.next_k = [0] * self.M
        # Algorithm state (under self.cond).
        self.buffer: list[tuple[_Slot, list[int]]] = []
        self.waiters: list[_Slot] = []
        self.round = 0
        self.clock_count: dict[int, int] = {0: self.M}
        self.min_clock = 0
        self.clock_waiters: dict[int, list[_Slot]] = {}
        # Run state (under self.state_lock).
        self.grads: dict[int, tuple] = {}  # pushed gradients not yet applied or dropped
        self.reads: dict[int, tuple] = {}  # DC-ASGD: the rows each pushed gradient was computed at
        self.uses: dict[int, int] = {}  # shards that have still to apply (or drop) each pushed gradient
        self.updates = 0
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

    # ---- arithmetic ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile the update before the clock starts (the first real update must not pay for it)."""
        self.store.warm_up()

    def now(self) -> float:
        return self.clock.now()

    def _sample_apply_time(self) -> float:
        with self._sample_lock:
            return self.apply_time()

    # ---- reads and gradient rows ----------------------------------------------------------------

    def _snapshot(self, t_pull: float | None, round_: int, has_params: bool = False) -> Read:
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
        return Read(now if t_pull is None else min(t_pull, now), now, versions, rows, round_, has_params)

    def read(self, wid: int, t_pull: float) -> Read | None:
        """An explicit pull (the first one, or after a restart), served now (None: the run is over)."""
        if self.stopped:
            return None
        with self.cond:
            slot = self.slots[wid]
            slot.round = self.round
            round_ = self.round
        return self._snapshot(t_pull, round_)

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
            mine = np.flatnonzero(np.frombuffer(self.trace.worker, np.int32) == wid).tolist()
        self.cancel(wid, sorted(set(gids) | set(mine)))
        now = self.clock.now()
        with self.cond:
            self.slots[wid].alive = False  # (SSP: its clock stays, holding the others back, as in the simulator)
        with self.state_lock:
            self.failures.append({"worker": wid, "t": round(now, 6), "error": f"{type(error).__name__}: {error}"[:200],
                                  "restart_after": restart_after})

    def worker_restarted(self, wid: int) -> None:
        now = self.clock.now()
        with self.cond:
            slot = self.slots[wid]
            slot.alive = True
            slot.cancel.clear()
        with self.state_lock:
            for f in reversed(self.failures):
                if f["worker"] == wid and "restarted" not in f:
                    f["restarted"] = round(now, 6)
                    break

    def alive(self) -> int:
        return sum(slot.alive for slot in self.slots)

    # ---- push: the server phase of each algorithm ----------------------------------------------

    def push(self, wid: int, gids: list[int], grads: list[tuple], reads: tuple | None, read: Read) -> Read | None:
        """A worker's gradients (per gid, a tuple of shard rows on the server device) arrive.

        Returns the worker's next read, or None when it must pull explicitly (its gradients were
        cancelled by a round that closed without them) or the run is over.
        """
        if self.stopped:
            return None
        with self.state_lock:
            now = self.clock.now()
            for gid, g in zip(gids, grads):
                self.trace.t_arrive[gid] = now
                self.grads[gid] = g
                self.uses[gid] = self.S
                if reads is not None:
                    self.reads[gid] = reads
        try:
            serve = {"async": self._serve_async, "ssp": self._serve_ssp, "k_async": self._serve_k_async,
                     "k_batch_async": self._serve_k_batch_async, "k_batch_sync": self._serve_k_batch_sync}.get(self.kind, self._serve_round)
            return serve(self.slots[wid], gids, read, now)
        except _Stopped:
            return None

    def _serve_async(self, slot: _Slot, gids: list[int], read: Read, t_arrive: float) -> Read:
        self._apply_all(gids, [1.0] * len(gids))
        return self._snapshot(None, 0)

    def _serve_ssp(self, slot: _Slot, gids: list[int], read: Read, t_arrive: float) -> Read:
        """SSP (Ho et al. 2013): commit, then wait while clock - min clock > staleness_bound."""
        self._apply_all(gids, [1.0] * len(gids))
        t_applied = self.clock.now()
        mine = self._snapshot(None, 0)
        with self.cond:
            self._commit_clock(slot)
            if slot.clock - self.min_clock <= self.ssp_bound:
                return mine
            wake = slot.wake = threading.Event()
            self.clock_waiters.setdefault(slot.clock, []).append(slot)
        self._wait(wake)
        return self._snapshot(t_applied, 0)

    def _commit_clock(self, slot: _Slot) -> None:
        counts = self.clock_count
        counts[slot.clock] = counts.get(slot.clock, 0) - 1
        slot.clock += 1
        counts[slot.clock] = counts.get(slot.clock, 0) + 1
        self._advance_min_clock()

    def _advance_min_clock(self) -> None:
        counts = self.clock_count
        while counts.get(self.min_clock, 0) <= 0:
            counts.pop(self.min_clock, None)
            self.min_clock += 1
            for waiter in self.clock_waiters.pop(self.min_clock + self.ssp_bound, []):
                waiter.wake.set()

    def _serve_k_async(self, slot: _Slot, gids: list[int], read: Read, t_arrive: float) -> Read | None:
        """K-async (Dutta et al. 2018): update after K workers pushed; only they pull."""
        with self.cond:
            wake = slot.wake = threading.Event()
            self.buffer.append((slot, gids))
            if len(self.buffer) < self.K:
                batch = None
            else:
                batch, self.buffer = self.buffer, []
        if batch is None:
            self._wait(wake)
            return slot.next_read
        members = [g for _, ids in batch for g in ids]
        self._apply_all(members, [1.0 / len(members)] * len(members))
        mine = self._snapshot(None, 0)
        with self.cond:
            for other, _ in batch:
                other.next_read = mine
                other.wake.set()
        return mine

    def _serve_k_batch_async(self, slot: _Slot, gids: list[int], read: Read, t_arrive: float) -> Read:
        """K-batch-async: an update per K gradients; the pusher reads at once (after the update
        when its push completes the batch)."""
        with self.cond:
            self.buffer.append((slot, gids))
            if len(self.buffer) >= self.K:
                batch, self.buffer = self.buffer, []
            else:
                batch = None
        if batch is not None:
            members = [g for _, ids in batch for g in ids]
            self._apply_all(members, [1.0 / len(members)] * len(members))
        return self._snapshot(t_arrive, 0)

    def _serve_round(self, slot: _Slot, gids: list[int], read: Read, t_arrive: float) -> Read | None:
        """Sync, K-sync, backup workers: a round closes on its K-th push."""
        with self.cond:
            if read.round != self.round:  # computed on parameters of a round already closed
                return self._late(slot, gids)
            wake = slot.wake = threading.Event()
            self.buffer.append((slot, gids))
            self.waiters.append(slot)
            if len(self.buffer) < self.K:
                closing = None
            else:
                closing = self._take_round(slot)
        if closing is None:
            self._wait(wake)
            return slot.next_read
        return self._close_round(slot, *closing)

    def _serve_k_batch_sync(self, slot: _Slot, gids: list[int], read: Read, t_arrive: float) -> Read | None:
        """K-batch-sync: K gradients from anyone at the same parameters; pushers keep going."""
        with self.cond:
            if read.round != self.round:
                return self._late(slot, gids)
            self.buffer.append((slot, gids))
            if len(self.buffer) < self.K:  # keep computing on the parameters already held
                return Read(read.t_pull, read.t_read, read.versions, read.rows, read.round, has_params=True)
            slot.wake = threading.Event()
            self.waiters.append(slot)
            closing = self._take_round(slot)
        return self._close_round(slot, *closing)

    def _late(self, slot: _Slot, gids: list[int]) -> Read | None:
        """(Under cond.) Gradients of a closed round are cancelled; a worker the closing round
        marked gets that round's broadcast, any other pulls explicitly."""
        self._cancel_locked(gids)
        if not slot.cancel.is_set():
            return None
        wake = slot.wake
        self.cond.release()
        try:
            self._wait(wake)
        finally:
            self.cond.acquire()
        slot.cancel.clear()
        return slot.next_read

    def _cancel_locked(self, gids: list[int]) -> None:
        with self.state_lock:
            for gid in gids:
                if self.trace.fate[gid] == PENDING:
                    self.trace.fate[gid] = CANCELLED
                self.grads.pop(gid, None)
                self.reads.pop(gid, None)
                self.uses.pop(gid, None)
        self.store.discard(gids)

    def _take_round(self, closer: _Slot) -> tuple[list[tuple[_Slot, list[int]]], list[_Slot]]:
        """(Under cond.) Close the round: take the buffer, and mark the workers still computing
        on this round's parameters (their work is cancelled; they get the broadcast)."""
        batch, self.buffer = self.buffer, []
        self.round += 1
        waiting = {s.wid for s in self.waiters}  # (k_batch_sync: pushers not waiting are computing again)
        for other in self.slots:
            if other.alive and other.round == self.round - 1 and other.wid not in waiting:
                other.wake = threading.Event()
                other.cancel.set()
                self.waiters.append(other)
        waiters, self.waiters = self.waiters, []
        return batch, waiters

    def _close_round(self, closer: _Slot, batch: list[tuple[_Slot, list[int]]], waiters: list[_Slot]) -> Read | None:
        members = [g for _, ids in batch for g in ids]
        self._apply_all(members, [1.0 / len(members)] * len(members))
        mine = self._snapshot(None, self.round)
        with self.cond:
            for other in waiters:
                other.round = self.round
                other.next_read = mine
                other.wake.set()
        return mine

    def await_broadcast(self, wid: int) -> Read | None:
        """A worker whose round closed without it waits for that round's broadcast read."""
        slot = self.slots[wid]
        with self.cond:
            wake = slot.wake
        try:
            self._wait(wake)
        except _Stopped:
            return None
        with self.cond:
            slot.cancel.clear()
        return slot.next_read if not self.stopped else None

    def _wait(self, wake: threading.Event) -> None:
        while not wake.wait(0.1):
            if self.stopped:
                raise _Stopped
        if self.stopped:
            raise _Stopped

    # ---- updates ------------------------------------------------------------------------------

    def _apply_all(self, members: list[int], weights: list[float]) -> None:
        """Apply one update to every shard: in parallel (a thread per shard) or atomically."""
        if self.S == 1:
            self._apply_shard(self.shards[0], members, weights)
        elif self.scenario.server.atomic and self.lock_policy in ("shard", "rw"):
            self._apply_atomic(members, weights)
        else:
            assert self._pool is not None
            futures = [self._pool.submit(self._apply_shard, sh, members, weights) for sh in self.shards]
            for f in futures:
                f.result()
        if self.stopped:
            raise _Stopped

    def _apply_atomic(self, members: list[int], weights: list[float]) -> None:
        t_request = self.clock.now()
        locks = [sh.lock for sh in self.shards]
        for lock in locks:
            lock.acquire()  # type: ignore[union-attr]
        try:
            t_lock = self.clock.now()
            for sh in self.shards:
                self._update(sh, members, weights, t_request, t_lock)
        finally:
            for lock in locks:
                lock.release()  # type: ignore[union-attr]

    def _apply_shard(self, sh: _Shard, members: list[int], weights: list[float]) -> None:
        t_request = self.clock.now()
        if sh.lock is None:
            self._update(sh, members, weights, t_request, t_request)
            return
        with sh.lock:
            self._update(sh, members, weights, t_request, self.clock.now())

    def _update(self, sh: _Shard, members: list[int], weights: list[float], t_request: float, t_lock: float) -> None:
        """One update of shard ``sh`` (its modelled lock, if any, is held): drop-stale, apply, commit."""
        if self.stopped:
            return
        try:
            self._update_row(sh, members, weights, t_request, t_lock)
        finally:
            with self.state_lock:
                for g in members:
                    left = self.uses.get(g, 1) - 1
                    if left <= 0:
                        self.uses.pop(g, None)
                        self.grads.pop(g, None)
                        self.reads.pop(g, None)
                    else:
                        self.uses[g] = left

    def _update_row(self, sh: _Shard, members: list[int], weights: list[float], t_request: float, t_lock: float) -> None:
        hold_until = t_lock + self._sample_apply_time() if self.emulate else None
        if sh.lock is None and hold_until is not None:
            _sleep_until(self.clock, hold_until)  # lock-free: the holds of concurrent updates overlap
        with sh.mutex:
            s, S, tr = sh.index, self.S, self.trace
            dropped: list[Any] = []
            with self.state_lock:
                before = sh.version
                if self.drop_above is not None:
                    kept = []
                    for g, w in zip(members, weights):
                        stale = before - tr.read_version[g * S + s]
                        if stale > self.drop_above:
                            tr.record_drop(g, stale, t_lock)
                            dropped.append(self.grads[g][s])
                        else:
                            kept.append((g, w))
                    members, weights = [g for g, _ in kept], [w for _, w in kept]
                grads = [self.grads[g][s] for g in members]
                reads = [self.reads[g][s] for g in members] if self.needs_read else None
                stale_of = [before - tr.read_version[g * S + s] for g in members]
                worker_of = [int(tr.worker[g]) for g in members]
                row, state = sh.row, sh.state
            if not members:
                self.store.discard(dropped)
                return
            if self.lock_policy == "rw":
                with self.gate:
                    sh.writing += 1
            try:
                new, state = self.store.update(s, before, row, state, grads, reads, weights, stale_of, worker_of, dropped)
                if sh.lock is not None and hold_until is not None:
                    _sleep_until(self.clock, hold_until)
                self._commit(sh, members, weights, new, state, t_request, t_lock)
            finally:
                if self.lock_policy == "rw":
                    with self.gate:
                        sh.writing -= 1
                        self.gate.notify_all()

    def _commit(self, sh: _Shard, members: list[int], weights: list[float], new: Any, state: Any,
                t_request: float, t_lock: float) -> None:
        """The update lands: swap the row, bump the version, record it (one atomic step)."""
        snapshot = None
        with self.state_lock:
            if self.stopped:
                return
            now = self.clock.now()
            S = self.S
            before = sh.version
            sh.row, sh.state, sh.version = new, state, before + 1
            self.trace.record_apply(sh.index, before, t_request, t_lock, now, members, weights)
            logical = before + 1 if S == 1 else min(x.version for x in self.shards)
            self.last_update_time = now
            if logical > self.updates:
                self.updates = logical
                rows = tuple(x.row for x in self.shards)
                if logical % self.eval_every == 0:
                    self.snapshots.append((logical, now, rows, self.trace.num_update_rows))
                if self.checkpoint_every and logical % self.checkpoint_every == 0 and logical > self.last_checkpoint \
                        and logical < self.until_updates:
                    self.last_checkpoint = logical
                    snapshot = self._checkpoint_state(now)
                if logical >= self.until_updates:
                    self._stop_locked("until_updates", now)
        if snapshot is not None and self.on_checkpoint is not None:
            snapshot["rows"] = self.store.fetch(snapshot["rows"])
            snapshot["states"] = self.store.fetch(snapshot["states"])
            self.on_checkpoint(snapshot)

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
        """(Under the state lock.) A consistent cut: rows, optimizer states, versions, trace, k."""
        return {
            "updates": self.updates, "t": now, "versions": [sh.version for sh in self.shards],
            "rows": [sh.row for sh in self.shards], "states": [sh.state for sh in self.shards],
            "next_k": list(self.next_k), "trace": self.trace.freeze({"workers": self.M}),
            "failures": [dict(f) for f in self.failures], "snapshots": [(u, t) for u, t, _, _ in self.snapshots],
        }

    def _restore(self, ckpt: Any) -> None:
        """Continue from a checkpoint: its parameters, optimizer states, versions and trace.

        Gradients in flight at the checkpoint were lost with the process: they are cancelled.
        """
        for sh in self.shards:
            sh.version = int(ckpt.versions[sh.index])
            sh.row, sh.state = self.store.restore(sh.index, sh.version, ckpt.rows[sh.index], ckpt.state_leaves[sh.index])
        builder = TraceBuilder.from_trace(ckpt.trace)
        for gid in range(builder.num_gradients):
            if builder.fate[gid] == PENDING:
                builder.fate[gid] = CANCELLED
        self.trace = builder
        self.next_k = [int(k) for k in ckpt.next_k]
        self.updates = int(ckpt.updates)
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


def _sleep_until(clock: Clock, t: float) -> None:
    delay = t - clock.now()
    if delay > 0:
        time.sleep(delay)
