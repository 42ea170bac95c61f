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
import os
from collections.abc import Callable
from pathlib import Path
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
from .trace import APPLIED, PENDING, TraceBuilder

__all__ = ["NumericsEngine", "Metrics"]


CPU_WAVE_ROWS = 4  # update rows per wave on a CPU backend (see NumericsEngine.__init__)
HISTORY_BUDGET_BYTES = 512 * 2**20  # initial ring-buffer budget; it may still grow beyond


def enable_compilation_cache() -> None:
    """Keep compiled waves on disk so a rerun of a scenario skips most compilation.

    Uses $ASGD_SIM_JAX_CACHE: a folder, "off" (or 0/false/no) to disable, unset (or on/1/true/yes)
    for ~/.cache/asgd-sim/jax; unless the user already configured JAX's own cache.
    """
    setting = os.environ.get("ASGD_SIM_JAX_CACHE", "").strip()
    if setting.lower() in ("off", "0", "false", "no") or jax.config.jax_compilation_cache_dir:
        return
    default = str(Path.home() / ".cache" / "asgd-sim" / "jax")
    where = default if setting.lower() in ("", "on", "1", "true", "yes") else setting
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


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
        enable_compilation_cache()
        self.scenario = sc = scenario
        self.M, self.S = sc.num_workers, sc.server.shards
        self.kind = sc.algorithm.kind
        self.problem = problem or build_problem(sc, self.M)
        flat, self.unravel = ravel_pytree(self.problem.init(jax.random.PRNGKey(sc.run.seed)))
        self.P = int(flat.size)
        self.chunk = -(-self.P // self.S)
        # Host-side padding and one transfer: eager device ops would each compile a tiny program.
        padded = np.zeros(self.S * self.chunk, np.float32)
        padded[: self.P] = np.asarray(flat, np.float32)
        self.params = jax.device_put(padded.reshape(self.S, self.chunk))
        self.rule = make_server_rule(sc.optimizer, self.M)
        self.state = jax.jit(jax.vmap(self.rule.init))(self.params)
        self.members_max = {"async": 1, "ssp": 1, "easgd": sc.algorithm.local_steps, "sync": self.M - sc.algorithm.backup,
                            "local_sgd": self.M * sc.algorithm.local_steps}.get(self.kind, sc.algorithm.k)
        self.cap = max(1, sc.run.batch_cap)
        # One wave shape per run, so one compilation: about sqrt(pi M / 2) updates are ready at
        # once in async SGD with M workers (the birthday-problem length of a run of stale reads),
        # times S shard rows each; longer waves are split, shorter ones padded.
        natural = self.S * math.ceil(math.sqrt(math.pi * self.M / 2)) if self.members_max == 1 else 1
        if jax.default_backend() == "cpu":
            # On a CPU a vmapped block of more than ~4 gradients costs more per gradient (the
            # stacked weights fall out of cache: measured 0.17 ms/gradient at 4, 0.31 at 16 for the
            # digits MLP), so waves stay short there; accelerators take the natural length.
            natural = min(natural, CPU_WAVE_ROWS * self.S)
        # (At most batch_cap gradients per vmapped call: the largest power of 4 <= cap / members.)
        self.max_rows = min(_bucket4(natural), max(1, _bucket4(self.cap // self.members_max + 1) // 4))
        self.H = self._initial_history(sc)
        history = np.zeros((self.H, self.S, self.chunk), np.float32)
        history[0] = padded.reshape(self.S, self.chunk)
        self.history = jax.device_put(history)
        self.versions = np.zeros(self.S, np.int64)  # materialised version of each shard
        self.row = 0  # next update row of the trace to apply
        self.seen = 0  # gradients of the trace already registered as live
        self.live = np.zeros(0, np.int64)  # gradients that may still need computing
        self.done = np.zeros(0, bool)  # per gradient: computed already
        self.next_history_check = 0
        self.stale_sum = 0.0
        self.stale_count = 0
        self.flags: list[tuple[int, int, jax.Array]] = []  # (first row, end row, any loss bad) per wave
        self.check_now = False  # a divergence already known on the host
        self.diverged_at: int | None = None
        self.traces = 0  # compilations of the jitted functions (a no-retrace guard for tests)
        self._wave = jax.jit(self._wave_impl, donate_argnums=(0, 1, 2))
        self._apply = jax.jit(self._apply_impl, donate_argnums=(0, 1, 2))
        self._evaluate = jax.jit(self._evaluate_impl)
        if self.kind in ("local_sgd", "easgd"):
            from .local import LocalModels

            self.local = LocalModels(self)

    def _initial_history(self, sc: Scenario) -> int:
        """Ring size: twice the staleness a run of this length is likely to see, within a budget.

        With M workers the largest staleness over N updates is about M (1 + ln N) for
        exponential-like compute times (the maximum of N exponential draws is ~ln N means); the
        ring grows (one recompilation) if a straggler needs more.
        """
        updates = sc.run.until_updates or 10_000
        likely = 2 * self.M * (2 + math.log(max(updates, 2)))
        budget = max(128, HISTORY_BUDGET_BYTES // (4 * self.S * self.chunk))
        return _bucket(max(min(likely, budget), 4 * self.max_rows, 128))

    # ---- jitted pieces -----------------------------------------------------------------------

    def flat_loss(self, shard_rows: jax.Array, worker: jax.Array, k: jax.Array) -> jax.Array:
        params = self.unravel(shard_rows.reshape(-1)[: self.P])
        return self.problem.loss(params, self.problem.make_batch(worker, k))

    def _wave_impl(self, params: jax.Array, state: Any, history: jax.Array, grad_ints: jax.Array,
                   row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """One wave in one call: all its gradients (vmapped), then its updates in order (scan).

        grad_ints[g] = (read slot of each shard..., worker, k, valid); the rest as in _scan.
        """
        self.traces += 1
        S = self.S
        read = history[grad_ints[:, :S], jnp.arange(S)[None, :]]  # [G, S, chunk]
        losses, grads = jax.vmap(jax.value_and_grad(self.flat_loss))(read, grad_ints[:, S], grad_ints[:, S + 1])
        valid = grad_ints[:, S + 2] > 0
        bad = jnp.any(valid & ~(losses <= self.scenario.run.max_loss))  # NaN compares false
        params, state, history = self._scan(params, state, history, grads, row_ints, member_ints, weights)
        return params, state, history, bad

    def _apply_impl(self, params: jax.Array, state: Any, history: jax.Array, grads: jax.Array,
                    row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Apply updates whose (pseudo-)gradients are given (local SGD)."""
        self.traces += 1
        return self._scan(params, state, history, grads, row_ints, member_ints, weights)

    def _scan(self, params: jax.Array, state: Any, history: jax.Array, grads: jax.Array,
              row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Apply update rows in server order, one scan step each.

        row_ints[r] = (shard, history slot of the new version, active); member_ints[r, m] =
        (gradient index, staleness, worker, history slot of the version read); weights[r, m].
        Inactive (padding) rows change nothing.
        """
        rule, needs_read = self.rule, self.rule.needs_read_params
        # DC-ASGD's read parameters are gathered before the loop: every version a wave's gradients
        # read exists at its start, and a gather from the history inside the loop body makes XLA
        # copy the whole ring on every step (measured ~8x slower).
        reads = history[member_ints[:, :, 3], row_ints[:, 0][:, None]] if needs_read else jnp.zeros(len(row_ints))

        def step(carry: tuple, x: tuple) -> tuple:
            params, state, history = carry
            rows, members, weight, read = x
            s, slot, active = rows[0], rows[1], rows[2] > 0
            mine = jax.tree.map(lambda leaf: leaf[s], state)
            read = read if needs_read else None
            new, new_state = rule.apply(params[s], mine, grads[members[:, 0], s], weights=weight,
                                        staleness=members[:, 1], workers=members[:, 2], read_params=read)
            new = jnp.where(active, new, params[s])
            new_state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, mine)
            params = params.at[s].set(new)
            state = jax.tree.map(lambda leaf, n: leaf.at[s].set(n), state, new_state)
            history = history.at[slot, s].set(jnp.where(active, new, history[slot, s]))
            return (params, state, history), None

        (params, state, history), _ = jax.lax.scan(step, (params, state, history), (row_ints, member_ints, weights, reads))
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
            self.live = self.live[((fate == APPLIED) | (fate == PENDING)) & ~self._done(n)[self.live]]

    def _done(self, n: int) -> np.ndarray:
        if len(self.done) < n:
            self.done = np.concatenate([self.done, np.zeros(max(n - len(self.done), len(self.done)), bool)])
        return self.done

    def _ensure_history(self, tr: TraceBuilder) -> None:
        """Keep every version a not-yet-computed gradient still needs inside the ring buffer.

        Checked every H/4 versions: at a check the oldest needed version must lie in the newest
        H/2, which leaves room for H/4 more versions (>= one wave) before the next check.
        """
        newest = int(self.versions.max())
        if newest < self.next_history_check:
            return
        self._register(tr)
        reads = _col(tr.read_version, np.int64).reshape(-1, self.S)[self.live] if self.live.size else None
        oldest = int(reads.min()) if reads is not None else newest
        span = newest - min(oldest, newest) + self.H // 2
        if span >= self.H:
            new_h = _bucket(2 * span)
            keep = np.arange(max(0, newest - self.H + 1), newest + 1)
            grown = jnp.zeros((new_h, self.S, self.chunk), jnp.float32)
            self.history = grown.at[keep % new_h].set(self.history[keep % self.H])
            self.H = new_h
        self.next_history_check = newest + self.H // 4

    def next_wave(self, tr: TraceBuilder, eval_every: int, limit: float) -> tuple[int, int]:
        """The update rows [row, end) whose gradients can all be computed now.

        A row qualifies while every member read only versions already materialised. The wave
        also ends at an evaluation point and at ``limit`` logical updates.
        """
        start = self.row
        stop = min(tr.num_update_rows, start + self.max_rows)
        offsets = _col(tr.u_offsets, np.int64)[start:stop + 1]
        gids = _col(tr.u_gid, np.int64)[offsets[0]:offsets[-1]]
        reads = _col(tr.read_version, np.int64).reshape(-1, self.S)[gids]
        late = np.logical_or.reduceat((reads > self.versions).any(axis=1), offsets[:-1] - offsets[0])
        end = start + (int(np.argmax(late)) if late.any() else stop - start)
        if end == start:
            raise RuntimeError("a gradient read a version that is not applied yet: the trace is inconsistent")
        # Cut at the next evaluation point or the update limit (in logical updates).
        if self.S == 1:
            after = self.versions[0] + np.arange(1, end - start + 1)
            cut = np.flatnonzero((after % eval_every == 0) | (after >= limit))
            return (start, start + int(cut[0]) + 1) if cut.size else (start, end)
        versions = self.versions.copy()
        for i, shard in enumerate(_col(tr.u_shard, np.int32)[start:end]):
            versions[shard] += 1
            logical = int(versions.min())
            if (logical % eval_every == 0 or logical >= limit) and logical > self.logical_updates():
                return start, start + i + 1
        return start, end

    def run_wave(self, tr: TraceBuilder, start: int, end: int) -> None:
        """Dispatch one wave (asynchronously: the host goes on while the device computes)."""
        if self.kind in ("local_sgd", "easgd"):
            if not self.local.run_rows(tr, start, end):
                self.flags.append((start, end, jnp.bool_(True)))
                self.check_now = True
            return
        self._ensure_history(tr)
        offsets = _col(tr.u_offsets, np.int64)[start:end + 1]
        member_gid = _col(tr.u_gid, np.int64)[offsets[0]:offsets[-1]]
        member_weight = _col(tr.u_weight, np.float64)[offsets[0]:offsets[-1]]
        if self.S == 1:  # every gradient is used by exactly one update row
            uniq, index = member_gid, np.arange(len(member_gid))
        else:
            uniq, index = np.unique(member_gid, return_inverse=True)
        length = self.max_rows
        n = len(uniq)
        # Gradients padded to a fixed count: all rows' members for async, a power of two otherwise.
        grad_ints = np.zeros((length if self.members_max == 1 and self.S == 1 else _bucket(n), self.S + 3), np.int32)
        grad_ints[:n, :self.S] = _col(tr.read_version, np.int64).reshape(-1, self.S)[uniq] % self.H
        grad_ints[:n, self.S] = _col(tr.worker, np.int32)[uniq]
        grad_ints[:n, self.S + 1] = _col(tr.k, np.int64)[uniq]
        grad_ints[:n, self.S + 2] = 1
        row_ints, member_ints, weights = self.scan_inputs(tr, start, end, offsets, member_gid, member_weight, index, length)
        self.params, self.state, self.history, bad = self._wave(self.params, self.state, self.history, grad_ints,
                                                               row_ints, member_ints, weights)
        self.flags.append((start, end, bad))
        self._advance(tr, start, end, uniq)

    def _advance(self, tr: TraceBuilder, start: int, end: int, computed: np.ndarray) -> None:
        np.add.at(self.versions, _col(tr.u_shard, np.int32)[start:end], 1)
        self.row = end
        self._done(tr.num_gradients)[computed] = True
        stale = _col(tr.staleness, np.int64)[computed]
        applied = _col(tr.fate, np.int8)[computed] == APPLIED
        self.stale_sum += float(stale[applied].sum())
        self.stale_count += int(applied.sum())

    def diverged(self, tr: TraceBuilder) -> bool:
        """Whether any wave so far saw a NaN/Inf or too-large loss (waits for the device)."""
        for start, end, bad in self.flags:
            if bool(bad):
                self.diverged_at = int(_col(tr.u_version, np.int64)[start])
                # Keep self.row: the waves dispatched after this one were applied too, so the run
                # (trace, metrics, parameters) ends after them, not at this wave's end.
                return True
        self.flags.clear()
        return False

    def scan_inputs(self, tr: TraceBuilder, start: int, end: int, offsets: np.ndarray, member_gid: np.ndarray,
                    member_weight: np.ndarray, index: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded per-row and per-member arrays for `_scan` (see its docstring)."""
        rows, width = end - start, self.members_max
        counts = np.diff(offsets)
        row_of = np.repeat(np.arange(rows), counts)
        position = np.arange(len(member_gid)) - np.repeat(offsets[:-1] - offsets[0], counts)
        shard = _col(tr.u_shard, np.int32)[start:end]
        version = _col(tr.u_version, np.int64)[start:end]
        reads = _col(tr.read_version, np.int64).reshape(-1, self.S)[member_gid, shard[row_of]]
        row_ints = np.zeros((length, 3), np.int32)
        row_ints[:rows, 0] = shard
        row_ints[:rows, 1] = version % self.H
        row_ints[:rows, 2] = 1
        member_ints = np.zeros((length, width, 4), np.int32)
        member_ints[row_of, position, 0] = index
        member_ints[row_of, position, 1] = version[row_of] - 1 - reads  # staleness on this shard
        member_ints[row_of, position, 2] = _col(tr.worker, np.int32)[member_gid]
        member_ints[row_of, position, 3] = reads % self.H
        weights = np.zeros((length, width), np.float32)
        weights[row_of, position] = member_weight
        return row_ints, member_ints, weights

    def staleness_mean(self) -> float:
        return self.stale_sum / self.stale_count if self.stale_count else 0.0


def _bucket4(n: int) -> int:
    """Wave lengths are padded to a power of four, at least 4: three or four shapes, so few
    compilations. Not 1: XLA turns a one-step scan into straight-line code that copies the whole
    donated history buffer instead of updating it in place (measured: ~50x slower per wave)."""
    size = 4
    while size < n:
        size *= 4
    return size


def drive(engine: TimingEngine, numerics: NumericsEngine, metrics: Metrics,
          progress: Callable[[int, float], None] | None = None) -> str:
    """Advance timing and numerics together; returns why the run ended.

    Timing runs ahead by ``run.window`` updates; the numerics follow wave by wave without
    waiting for the device, which is synchronised only at evaluations (every ``run.eval_every``
    logical updates). ``run.target_accuracy`` and divergence stop the run at that point.
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
            numerics.run_wave(tr, start, end)
            logical = numerics.logical_updates()
            if progress is not None:
                progress(logical, float(tr.u_applied[end - 1]))
            if numerics.check_now or (logical % eval_every == 0 and logical > metrics.update[-1]):
                stop = _evaluation(numerics, metrics, tr)
                if stop:
                    return stop
        if not running:
            if numerics.logical_updates() > metrics.update[-1] or numerics.flags:
                stop = _evaluation(numerics, metrics, tr)
                if stop:
                    return stop
            return engine.stopped


def _evaluation(numerics: NumericsEngine, metrics: Metrics, tr: TraceBuilder) -> str:
    """Check for divergence, evaluate and record; the reason to stop, or ''."""
    if numerics.diverged(tr):
        _record(numerics, metrics, float(tr.u_applied[numerics.row - 1]) if numerics.row else 0.0)
        return "diverged"
    if _record(numerics, metrics, float(tr.u_applied[numerics.row - 1]) if numerics.row else 0.0):
        return "target_accuracy"
    if not metrics.train_loss[-1] <= numerics.scenario.run.max_loss:  # NaN, Inf or blow-up
        numerics.diverged_at = numerics.logical_updates()
        return "diverged"
    return ""


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
