"""The numerics engine: every gradient is a real JAX gradient at the exact stale parameters read.

It folds a trace into parameters. The parallelism of asynchronous SGD is its staleness
(DESIGN.md): gradient g needs only the version its worker read, so every gradient whose read
version already exists is computed together in one ``jax.vmap`` call, and the updates that use
them are then applied in server order by one jitted ``lax.scan``. A run is a sequence of such
*waves*; with M workers a wave holds about M updates.

Layout on the device:
- parameters are one flat float32 vector split into S equal shard rows, ``params[S, chunk]``
  (padded with zeros that no loss touches), so a shard update is a row update;
- the optimizer state is stacked per shard (``vmap(rule.init)``), so each shard has its own;
- ``history[H, S, chunk]`` is a ring buffer of past versions (version v of shard s lives at
  ``[v % H, s]``). H covers the oldest version any not-yet-computed gradient still needs, and
  grows (doubling) when a straggler needs more: memory follows in-flight staleness, not run
  length.
Shapes are bucketed to powers of two (padded rows are no-ops), so after warm-up nothing retraces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .config import Scenario
from .engine import TimingEngine
from .problems import Problem, build_problem
from .rules import make_server_rule
from .trace import APPLIED, TraceBuilder

__all__ = ["NumericsEngine", "Metrics"]


def _bucket(n: int) -> int:
    """The power of two >= n: few distinct shapes, so few compilations."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _col(column: Any, dtype: Any) -> np.ndarray:
    # A temporary zero-copy view of an array.array column. Callers index it at once (a copy), so
    # no view outlives the statement: array.array refuses to grow while a view exists.
    return np.frombuffer(column, dtype=dtype)


@dataclass
class Metrics:
    """Evaluations over the run (the rows of metrics.csv)."""

    update: list[int] = field(default_factory=list)
    sim_time: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    staleness_mean: list[float] = field(default_factory=list)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in ("update", "sim_time", "train_loss", "test_accuracy", "staleness_mean")}


class NumericsEngine:
    """Consumes a timing engine's trace as it grows and computes the parameters it implies."""

    def __init__(self, scenario: Scenario, problem: Problem | None = None) -> None:
        self.scenario = sc = scenario
        self.M, self.S = sc.num_workers, sc.server.shards
        self.kind = sc.algorithm.kind
        self.problem = problem or build_problem(sc, self.M)
        flat, self.unravel = ravel_pytree(self.problem.init(jax.random.PRNGKey(sc.run.seed)))
        self.P = int(flat.size)
        self.chunk = -(-self.P // self.S)
        padded = jnp.zeros(self.S * self.chunk, jnp.float32).at[: self.P].set(flat.astype(jnp.float32))
        self.params = padded.reshape(self.S, self.chunk)
        self.rule = make_server_rule(sc.optimizer, self.M)
        self.state = jax.vmap(self.rule.init)(self.params)
        self.H = _bucket(max(4 * self.M, 2 * sc.run.window, 64))
        self.history = jnp.zeros((self.H, self.S, self.chunk), jnp.float32).at[0].set(self.params)
        self.versions = np.zeros(self.S, np.int64)  # materialised version of each shard
        self.members_max = {"async": 1, "ssp": 1, "easgd": sc.algorithm.local_steps, "sync": self.M - sc.algorithm.backup,
                            "local_sgd": self.M * sc.algorithm.local_steps}.get(self.kind, sc.algorithm.k)
        self.cap = max(1, sc.run.batch_cap)
        self.row = 0  # next update row of the trace to apply
        self.seen = 0  # gradients of the trace already registered as live
        self.live = np.zeros(0, np.int64)  # gradients that may still need computing
        self.stale_sum = 0.0
        self.stale_count = 0
        self.diverged_at: int | None = None
        self.traces = 0  # compilations of the jitted functions (a no-retrace guard for tests)
        self._grads = jax.jit(self._grads_impl)
        self._apply = jax.jit(self._apply_impl, donate_argnums=(0, 1, 2))
        self._evaluate = jax.jit(self._evaluate_impl)
        if self.kind in ("local_sgd", "easgd"):
            from .local import LocalModels

            self.local = LocalModels(self)

    # ---- jitted pieces -----------------------------------------------------------------------

    def flat_loss(self, shard_rows: jax.Array, worker: jax.Array, k: jax.Array) -> jax.Array:
        params = self.unravel(shard_rows.reshape(-1)[: self.P])
        return self.problem.loss(params, self.problem.make_batch(worker, k))

    def _grads_impl(self, history: jax.Array, slots: jax.Array, workers: jax.Array, ks: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Losses and gradients of G gradients, each at the history versions ``slots[g, s]``."""
        self.traces += 1
        read = history[slots, jnp.arange(self.S)[None, :]]  # [G, S, chunk]
        return jax.vmap(jax.value_and_grad(self.flat_loss))(read, workers, ks)

    def _apply_impl(self, params: jax.Array, state: Any, history: jax.Array, grads: jax.Array, xs: dict[str, jax.Array]) -> tuple:
        """Apply a wave of updates in server order (one scan step per update row)."""
        self.traces += 1
        rule, needs_read = self.rule, self.rule.needs_read_params

        def step(carry: tuple, x: dict[str, jax.Array]) -> tuple:
            params, state, history = carry
            s = x["shard"]
            mine = jax.tree.map(lambda leaf: leaf[s], state)
            read = history[x["read_slot"], s] if needs_read else None
            new, new_state = rule.apply(params[s], mine, grads[x["index"], s], weights=x["weight"],
                                        staleness=x["staleness"], workers=x["worker"], read_params=read)
            new = jnp.where(x["active"], new, params[s])
            new_state = jax.tree.map(lambda n, o: jnp.where(x["active"], n, o), new_state, mine)
            params = params.at[s].set(new)
            state = jax.tree.map(lambda leaf, n: leaf.at[s].set(n), state, new_state)
            history = history.at[x["slot"], s].set(jnp.where(x["active"], new, history[x["slot"], s]))
            return (params, state, history), None

        (params, state, history), _ = jax.lax.scan(step, (params, state, history), xs)
        return params, state, history

    def _evaluate_impl(self, params: jax.Array) -> dict[str, jax.Array]:
        self.traces += 1
        return self.problem.evaluate(self.unravel(params.reshape(-1)[: self.P]))

    def evaluate(self) -> dict[str, float]:
        return {key: float(value) for key, value in self._evaluate(self.params).items()}

    def current_params(self) -> Any:
        """The server's parameters now, as the problem's pytree."""
        return self.unravel(self.params.reshape(-1)[: self.P])

    # ---- host side: waves --------------------------------------------------------------------

    def logical_updates(self) -> int:
        return int(self.versions.min())

    def pending_rows(self, tr: TraceBuilder) -> int:
        return tr.num_update_rows - self.row

    def _register(self, tr: TraceBuilder) -> None:
        """Track new gradients, and forget those computed, cancelled or dropped."""
        n = tr.num_gradients
        if n > self.seen:
            self.live = np.concatenate([self.live, np.arange(self.seen, n)])
            self.seen = n
        if self.live.size:
            fate = _col(tr.fate, np.int8)[self.live]
            self.live = self.live[(fate == APPLIED) | (fate == 3)]

    def _ensure_history(self, tr: TraceBuilder, produced: np.ndarray) -> None:
        """Grow the ring buffer if writing ``produced`` new versions per shard would overwrite a
        version that a gradient not yet computed still needs."""
        self._register(tr)
        if self.live.size:
            needed = _col(tr.read_version, np.int64).reshape(-1, self.S)[self.live].min(axis=0)
        else:
            needed = self.versions
        span = int(np.max(self.versions + produced - np.minimum(needed, self.versions))) + 1
        if span <= self.H:
            return
        new_h = _bucket(2 * span)
        old = self.history
        keep = np.arange(max(0, int(self.versions.max()) - self.H + 1), int(self.versions.max()) + 1)
        grown = jnp.zeros((new_h, self.S, self.chunk), jnp.float32)
        grown = grown.at[keep % new_h].set(old[keep % self.H])
        self.history, self.H = grown, new_h

    def next_wave(self, tr: TraceBuilder, eval_every: int, limit: int) -> tuple[int, int]:
        """The update rows [row, end) whose gradients can all be computed now.

        A row qualifies while every member read only versions already materialised. The wave
        also ends at an evaluation point and at ``limit`` logical updates.
        """
        start = self.row
        stop = min(tr.num_update_rows, start + max(1, self.cap // max(1, self.members_max)))
        offsets = _col(tr.u_offsets, np.int64)[start:stop + 1]
        gids = _col(tr.u_gid, np.int64)[offsets[0]:offsets[-1]]
        reads = _col(tr.read_version, np.int64).reshape(-1, self.S)[gids]
        shards = _col(tr.u_shard, np.int32)[start:stop]
        late = np.logical_or.reduceat((reads > self.versions).any(axis=1), offsets[:-1] - offsets[0])
        end = start + (int(np.argmax(late)) if late.any() else stop - start)
        if end == start:
            raise RuntimeError("a gradient read a version that is not applied yet: the trace is inconsistent")
        # Cut at the next evaluation point or the update limit (in logical updates).
        versions = self.versions.copy()
        for i, shard in enumerate(shards[: end - start]):
            versions[shard] += 1
            logical = int(versions.min())
            if logical % eval_every == 0 or logical >= limit:
                if logical > self.logical_updates():
                    return start, start + i + 1
        return start, end

    def run_wave(self, tr: TraceBuilder, start: int, end: int) -> bool:
        """Compute the wave's gradients in batches and apply its updates. False if it diverged."""
        if self.kind in ("local_sgd", "easgd"):
            return self.local.run_rows(tr, start, end)
        offsets = _col(tr.u_offsets, np.int64)[start:end + 1]
        member_gid = _col(tr.u_gid, np.int64)[offsets[0]:offsets[-1]]
        member_weight = _col(tr.u_weight, np.float64)[offsets[0]:offsets[-1]]
        uniq, index = np.unique(member_gid, return_inverse=True)
        losses, grads = self.gradients(tr, uniq)
        bad = ~np.isfinite(losses) | (losses > self.scenario.run.max_loss)
        rows = end - start
        self._ensure_history(tr, np.bincount(_col(tr.u_shard, np.int32)[start:end], minlength=self.S))
        xs = self._scan_inputs(tr, start, end, offsets, member_gid, member_weight, index)
        grads = _pad_rows(grads, _bucket(rows) * self.members_max)
        self.params, self.state, self.history = self._apply(self.params, self.state, self.history, grads, xs)
        shards = _col(tr.u_shard, np.int32)[start:end]
        np.add.at(self.versions, shards, 1)
        self.row = end
        self.live = self.live[~np.isin(self.live, uniq)]
        stale = _col(tr.staleness, np.int64)[uniq]
        fate = _col(tr.fate, np.int8)[uniq]
        self.stale_sum += float(stale[fate == APPLIED].sum())
        self.stale_count += int((fate == APPLIED).sum())
        if bad.any():
            first_bad = np.flatnonzero(np.isin(member_gid, uniq[bad]))[0]
            row_of_bad = int(np.searchsorted(offsets - offsets[0], first_bad, side="right")) - 1
            self.diverged_at = int(_col(tr.u_version, np.int64)[start + row_of_bad])
            return False
        return True

    def gradients(self, tr: TraceBuilder, gids: np.ndarray) -> tuple[np.ndarray, jax.Array]:
        """Losses (host) and gradients (device, [len(gids), S, chunk]) in vmapped batches."""
        reads = _col(tr.read_version, np.int64).reshape(-1, self.S)[gids]
        workers = _col(tr.worker, np.int32)[gids]
        ks = _col(tr.k, np.int64)[gids]
        losses, grads = [], []
        for lo in range(0, len(gids), self.cap):
            hi = min(lo + self.cap, len(gids))
            size = _bucket(hi - lo)
            pad = size - (hi - lo)
            slots = np.pad(reads[lo:hi] % self.H, ((0, pad), (0, 0)))
            loss, grad = self._grads(self.history, jnp.asarray(slots, jnp.int32), jnp.asarray(np.pad(workers[lo:hi], (0, pad)), jnp.int32),
                                     jnp.asarray(np.pad(ks[lo:hi], (0, pad)), jnp.int32))
            losses.append(np.asarray(loss)[: hi - lo])
            grads.append(grad[: hi - lo] if pad else grad)
        return np.concatenate(losses), grads[0] if len(grads) == 1 else jnp.concatenate(grads)

    def _scan_inputs(self, tr: TraceBuilder, start: int, end: int, offsets: np.ndarray, member_gid: np.ndarray,
                     member_weight: np.ndarray, index: np.ndarray) -> dict[str, jax.Array]:
        rows, width = end - start, self.members_max
        length = _bucket(rows)
        shard = np.zeros(length, np.int32)
        shard[:rows] = _col(tr.u_shard, np.int32)[start:end]
        version = _col(tr.u_version, np.int64)[start:end]
        slot = np.zeros(length, np.int32)
        slot[:rows] = version % self.H
        idx = np.zeros((length, width), np.int32)
        weight = np.zeros((length, width), np.float32)
        staleness = np.zeros((length, width), np.int32)
        worker = np.zeros((length, width), np.int32)
        read_slot = np.zeros((length, width), np.int32)
        reads = _col(tr.read_version, np.int64).reshape(-1, self.S)[member_gid]
        workers = _col(tr.worker, np.int32)[member_gid]
        local = offsets - offsets[0]
        for r in range(rows):
            lo, hi = local[r], local[r + 1]
            n = hi - lo
            s = shard[r]
            idx[r, :n] = index[lo:hi]
            weight[r, :n] = member_weight[lo:hi]
            # Staleness on this shard: the version before this update minus the version read.
            staleness[r, :n] = version[r] - 1 - reads[lo:hi, s]
            worker[r, :n] = workers[lo:hi]
            read_slot[r, :n] = reads[lo:hi, s] % self.H
        active = np.zeros(length, bool)
        active[:rows] = True
        return {"shard": jnp.asarray(shard), "slot": jnp.asarray(slot), "index": jnp.asarray(idx), "weight": jnp.asarray(weight),
                "staleness": jnp.asarray(staleness), "worker": jnp.asarray(worker), "read_slot": jnp.asarray(read_slot),
                "active": jnp.asarray(active)}

    def staleness_mean(self) -> float:
        return self.stale_sum / self.stale_count if self.stale_count else 0.0


def _pad_rows(grads: jax.Array, rows: int) -> jax.Array:
    if grads.shape[0] >= rows:
        return grads[:rows] if grads.shape[0] > rows else grads
    return jnp.concatenate([grads, jnp.zeros((rows - grads.shape[0], *grads.shape[1:]), grads.dtype)])


def drive(engine: TimingEngine, numerics: NumericsEngine, metrics: Metrics,
          progress: Callable[[int, float], None] | None = None) -> str:
    """Advance timing and numerics together; returns why the run ended.

    Timing runs ahead by ``run.window`` updates; the numerics follow wave by wave. Evaluations
    happen every ``run.eval_every`` logical updates; ``run.target_accuracy`` and divergence stop
    the run at the update where they happen.
    """
    sc = numerics.scenario
    tr = engine.trace
    eval_every, window = sc.run.eval_every, max(1, sc.run.window)
    limit = sc.run.until_updates if sc.run.until_updates is not None else math.inf
    _record(numerics, metrics, 0.0)
    while True:
        running = engine.step_until(numerics.logical_updates() + window)
        while numerics.pending_rows(tr):
            start, end = numerics.next_wave(tr, eval_every, limit)
            ok = numerics.run_wave(tr, start, end)
            now = float(tr.u_applied[end - 1])
            if not ok:
                _record(numerics, metrics, now)
                return "diverged"
            logical = numerics.logical_updates()
            if progress is not None:
                progress(logical, now)
            if logical % eval_every == 0 and logical > metrics.update[-1]:
                if _record(numerics, metrics, now):
                    return "target_accuracy"
                if not math.isfinite(metrics.train_loss[-1]) or metrics.train_loss[-1] > sc.run.max_loss:
                    numerics.diverged_at = logical
                    return "diverged"
        if not running:
            if numerics.logical_updates() > metrics.update[-1]:
                if _record(numerics, metrics, float(engine.env.now)):
                    return "target_accuracy"
            return engine.stopped


def _record(numerics: NumericsEngine, metrics: Metrics, now: float) -> bool:
    """Evaluate now; True when the target accuracy is reached."""
    values = numerics.evaluate()
    metrics.update.append(numerics.logical_updates())
    metrics.sim_time.append(now)
    metrics.train_loss.append(values["train_loss"])
    metrics.test_accuracy.append(values["test_accuracy"])
    metrics.staleness_mean.append(numerics.staleness_mean())
    target = numerics.scenario.run.target_accuracy
    return target is not None and values["test_accuracy"] >= target
