"""The real server's write path: one update the policy decided, carried onto every shard.

`backends.server.RealServer` delivers the policy's events and carries out its decisions; for an
`Apply` it calls `ShardWrites._apply_all`, defined here: the shards' modelled locks (one per shard,
one global, readers-writer, or none; ``server.atomic`` takes them all in sorted order), drop-stale
at lock time, the arithmetic by the policy's kind of model update (`backends.updates`: what the
shard store computes), and the commit, which swaps the row, bumps the version, records the trace
row, takes snapshots and checkpoints, and tells the policy of a new logical version
(`RealServer._deliver_updates`: Ringmaster's stops).

Lock order: a shard's modelled lock, then its mutex (the arithmetic of one update is atomic per
shard), then the state lock, innermost, held only for pointer swaps and trace writes. The policy's
condition variable is taken with none of the server's locks held but a modelled one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .updates import pick

__all__ = ["ShardSlot", "ShardWrites", "Stopped"]


@dataclass(eq=False)
class ShardSlot:
    """The server's view of one shard: handles of its row and optimizer state, version, locks."""

    index: int
    row: Any  # handles from the shard store (see `backends.shards`)
    state: Any
    lock: threading.Lock | None  # the modelled lock (None: lock-free)
    mutex: threading.Lock = field(default_factory=threading.Lock)  # atomic arithmetic of one update
    version: int = 0
    writing: int = 0  # rw: writes in progress


class Stopped(Exception):
    """The run is over: nothing more commits."""


class ShardWrites:
    """The write path of `backends.server.RealServer` (a mixin: the server's own state, below)."""

    # The server's state this path uses (set by RealServer.__init__).
    S: int
    shards: list[ShardSlot]
    store: Any
    policy: Any
    trace: Any
    clock: Any
    scenario: Any
    state_lock: threading.Lock
    gate: threading.Condition
    lock_policy: str
    emulate: bool
    may_drop: bool
    needs_read: bool
    model_update: str
    grads: dict[int, tuple]
    reads: dict[int, tuple]
    uses: dict[int, int]
    models: list[list[Any]] | None
    unsettled: dict[int, dict[int, Any]]
    stopped: str
    updates: int
    pushes: int
    until_updates: float
    last_update_time: float
    eval_every: int
    snapshots: list[tuple[int, float, tuple, int]]
    checkpoint_every: int | None
    last_checkpoint: int
    on_checkpoint: Any
    _pool: Any

    apply_time: Any
    _sample_lock: threading.Lock

    # (RealServer's own methods.)
    def _deliver_updates(self, version: int) -> None: ...
    def _stop_locked(self, reason: str, now: float) -> None: ...
    def _checkpoint_state(self, now: float) -> dict[str, Any]: ...

    def _sample_apply_time(self) -> float:
        with self._sample_lock:
            return self.apply_time()

    def _apply_all(self, members: list[int], weights: list[float]) -> None:
        """Apply one update to every shard: in parallel (a thread per shard) or atomically; its
        rows carry one push number (the trace's ``push``: lock waits are measured per push)."""
        with self.state_lock:
            push, self.pushes = self.pushes, self.pushes + 1
        if self.S == 1:
            self._apply_shard(self.shards[0], members, weights, push)
        elif self.scenario.server.atomic and self.lock_policy in ("shard", "rw"):
            self._apply_atomic(members, weights, push)
        else:
            assert self._pool is not None
            futures = [self._pool.submit(self._apply_shard, sh, members, weights, push) for sh in self.shards]
            for f in futures:
                f.result()
        if self.stopped:
            raise Stopped

    def _apply_atomic(self, members: list[int], weights: list[float], push: int) -> None:
        t_request = self.clock.now()
        locks = [sh.lock for sh in self.shards]
        for lock in locks:
            lock.acquire()  # type: ignore[union-attr]
        try:
            t_lock = self.clock.now()
            for sh in self.shards:
                self._update(sh, members, weights, t_request, t_lock, push)
        finally:
            for lock in locks:
                lock.release()  # type: ignore[union-attr]

    def _apply_shard(self, sh: ShardSlot, members: list[int], weights: list[float], push: int) -> None:
        t_request = self.clock.now()
        if sh.lock is None:
            self._update(sh, members, weights, t_request, t_request, push)
            return
        with sh.lock:
            self._update(sh, members, weights, t_request, self.clock.now(), push)

    def _update(self, sh: ShardSlot, members: list[int], weights: list[float], t_request: float, t_lock: float,
                push: int) -> None:
        """One update of shard ``sh`` (its modelled lock, if any, is held): drop-stale, apply, commit."""
        if self.stopped:
            return
        try:
            self._update_row(sh, members, weights, t_request, t_lock, push)
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

    def _update_row(self, sh: ShardSlot, members: list[int], weights: list[float], t_request: float, t_lock: float,
                    push: int) -> None:
        hold_until = t_lock + self._sample_apply_time() if self.emulate else None
        if sh.lock is None and hold_until is not None:
            self.clock.sleep_until(hold_until)  # lock-free: the holds of concurrent updates overlap
        raised = 0
        with sh.mutex:
            s = sh.index
            dropped: list[Any] = []
            with self.state_lock:
                before = sh.version
                if self.may_drop:
                    members, weights = self._drop_stale(s, before, members, weights, t_lock, dropped)
                inputs = pick(self.model_update, self.trace, s, before, members, weights, self.grads,
                              self.reads if self.needs_read else None) if members else None
                row, state = sh.row, sh.state
            if inputs is None:
                self.store.discard(dropped)
                return
            if self.lock_policy == "rw":
                with self.gate:
                    sh.writing += 1
            try:
                new, state, model = self.store.update(s, before, row, state, inputs.grads, inputs.reads, inputs.weights,
                                                      inputs.staleness, inputs.workers, dropped)
                if sh.lock is not None and hold_until is not None:
                    self.clock.sleep_until(hold_until)
                raised = self._commit(sh, members, weights, new, state, t_request, t_lock, push, inputs.workers[0], model)
            finally:
                if self.lock_policy == "rw":
                    with self.gate:
                        sh.writing -= 1
                        self.gate.notify_all()
        if raised:
            self._deliver_updates(raised)

    def _drop_stale(self, s: int, before: int, members: list[int], weights: list[float], t_lock: float,
                    dropped: list[Any]) -> tuple[list[int], list[float]]:
        """(Under the state lock.) The members the policy keeps at their staleness on shard ``s``;
        what the others shipped goes to ``dropped`` (EASGD: aside, for `_settle`)."""
        tr, S = self.trace, self.S
        kept: tuple[list[int], list[float]] = ([], [])
        for g, w in zip(members, weights):
            stale = before - tr.read_version[g * S + s]
            if self.policy.keep(stale):
                kept[0].append(g)
                kept[1].append(w)
                continue
            tr.record_drop(g, stale, t_lock)
            if g in self.grads:  # (local steps: a push ships with its first row only)
                if self.models is not None:
                    self.unsettled.setdefault(g, {})[s] = self.grads[g][s]
                else:
                    dropped.append(self.grads[g][s])
        return kept

    def _settle(self, gids: list[int]) -> None:
        """EASGD, after an update: a push dropped as too stale on some shards but exchanged on
        another leaves the worker its local steps on those shards too; dropped on every shard, it
        leaves the worker's model as it was (as the numerics engine does)."""
        with self.state_lock:
            settled = [(g, self.unsettled.pop(g)) for g in gids if g in self.unsettled]
        for g, left in settled:
            if len(left) == self.S:
                self.store.discard(list(left.values()))
                continue
            adopted = {s: self.store.adopt(s, handle) for s, handle in left.items()}
            with self.state_lock:
                self.models[int(self.trace.worker[g])].update(adopted)  # type: ignore[index]

    def _commit(self, sh: ShardSlot, members: list[int], weights: list[float], new: Any, state: Any,
                t_request: float, t_lock: float, push: int, worker: int, model: Any) -> int:
        """The update lands: swap the row, bump the version, record it (one atomic step). Returns
        the new logical version if it rose (else 0). ``model``: EASGD's new x_i row of ``worker``
        (the pusher), or None."""
        snapshot = None
        raised = 0
        with self.state_lock:
            if self.stopped:
                return 0
            now = self.clock.now()
            S = self.S
            before = sh.version
            sh.row, sh.state, sh.version = new, state, before + 1
            if model is not None:
                self.models[worker][sh.index] = model  # type: ignore[index]
            self.trace.record_apply(sh.index, before, t_request, t_lock, now, members, weights, push)
            logical = before + 1 if S == 1 else min(x.version for x in self.shards)
            self.last_update_time = now
            if logical > self.updates:
                self.updates = raised = logical
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
            if snapshot["models"] is not None:
                snapshot["models"] = [self.store.fetch(rows) for rows in snapshot["models"]]
            self.on_checkpoint(snapshot)
        return raised
