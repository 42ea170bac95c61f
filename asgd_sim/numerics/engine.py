"""The numerics engine: every gradient is a real JAX gradient at the exact stale parameters read.

It folds a trace into parameters. The parallelism of asynchronous SGD is its staleness
(DESIGN.md): gradient g needs only the version its worker read, so every gradient whose read
version already exists is computed together in one ``jax.vmap`` call, and the updates that use
them are then applied in server order by one jitted ``lax.scan``. A run is a sequence of such
*waves*; with M workers a wave holds about M updates.

Several waves go to the device as one call (a loop on the device), so the host pays one dispatch
per call; a call ends at an evaluation point.

Layout on the device:
- parameters are one flat float32 vector split into S equal shard rows, ``params[S, chunk]``
  (padded with zeros that no loss touches), so a shard update is a row update;
- the optimizer state is stacked per shard (``vmap(rule.init)``), so each shard has its own;
- ``history[C, S, chunk]`` holds the past versions that gradients may still read: each shard's
  newest version and those read by gradients not yet computed. Which slot holds which version is
  kept on the host (history.py); slots of versions nobody can read any more are reused, and the
  history grows (doubling) only when the versions still to be read fill most of it, so memory
  follows the staleness in flight, not the length of the run.
Shapes are fixed per run (padded rows and waves are no-ops), so after warm-up nothing retraces.
The host side (which rows form each wave, the history slots, the padded tables of a call) is
in planning.py; the slot maps are history.py and gradcache.py.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..scenario.config import Scenario
from .compile_cache import enable_compilation_cache
from .problems import Problem, build_problem
from .rules import make_server_rule
from .gradcache import GradientCache
from .history import SlotMap
from .planner import WavePlanning, _bucket, _col
from ..trace import APPLIED, TraceBuilder

__all__ = ["NumericsEngine"]


CPU_WAVE_ROWS = 4  # update rows per wave on a CPU backend (see NumericsEngine.__init__)
WAVES_PER_CALL = 64  # waves one device call may run
HISTORY_BUDGET_BYTES = 512 * 2**20  # initial history budget; it may still grow beyond


class NumericsEngine(WavePlanning):
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
        ready = math.sqrt(math.pi * self.M / 2)
        natural = self.S * math.ceil(ready) if self.members_max == 1 else 1
        if jax.default_backend() == "cpu":
            # On a CPU a vmapped block of more than ~8 gradients costs more per gradient (the
            # stacked weights fall out of cache: measured 0.12 ms/gradient at 4 and 8, 0.15 at 16,
            # 0.16 alone for the digits MLP), and padding rows cost as much as real ones, so waves
            # stay short and rarely padded there: the largest power of two <= the mean run of
            # ready updates (M = 8: 2 rows; waves of 4 were 28 % padding). Accelerators take
            # the natural length.
            rounded_down = 1 << max(0, int(ready).bit_length() - 1)
            natural = min(natural, self.S * min(CPU_WAVE_ROWS, rounded_down))
        # At most batch_cap gradients per vmapped call: the largest power of 2 <= cap / members.
        self.max_rows = min(_bucket(natural), 1 << max(0, (self.cap // self.members_max).bit_length() - 1))
        # The scan over a wave's rows has at least 2 steps: XLA turns a one-step scan into
        # straight-line code that copies the whole donated history instead of updating it in place
        # (measured ~50x slower). Padding rows are no-ops.
        self.rows_per_wave = max(2, self.max_rows)
        # Waves per device call: a call runs its waves in a loop on the device, so the host pays
        # one dispatch per call, not per wave; the member table of a call stays below ~1 MB.
        width = self.rows_per_wave * self.members_max
        self.waves_per_call = max(1, min(WAVES_PER_CALL, 65536 // width))
        self.slots = SlotMap(self.S, self._initial_capacity())
        # One more row than slots: the scratch row that padding rows write (`scratch`).
        history = np.zeros((self.slots.capacity + 1, self.S, self.chunk), np.float32)
        history[0] = padded.reshape(self.S, self.chunk)
        self.slots.store_each(np.zeros(self.S, np.int64))
        self.history = jax.device_put(history)
        self.cache, self.gcache = None, None
        if self.S > 1 and self.kind not in ("local_sgd", "easgd"):
            self.cache = GradientCache(self._cache_capacity())
            self.gcache = jnp.zeros((self.cache.capacity + 1, self.S, self.chunk), jnp.float32)  # (+ scratch)
        self.computed = 0  # gradients computed (with shards, some are read from the cache instead)
        self.versions = np.zeros(self.S, np.int64)  # planned (dispatched) version of each shard
        self.row = 0  # next update row of the trace to apply
        self.seen = 0  # gradients of the trace already registered as live
        self.live = np.zeros(0, np.int64)  # gradients that may still appear in an update row
        self.waves = 0  # vmapped gradient calls so far
        self.counted = np.zeros(0, bool)  # with shards: gradients whose staleness is counted
        self.stale_sum = 0.0
        self.stale_count = 0
        self.flags: list[tuple[np.ndarray, jax.Array]] = []  # per call: first row of each wave, any loss bad
        self.check_now = False  # a divergence already known on the host
        self.diverged_at: int | None = None
        self.traces = 0  # compilations of the jitted functions (a no-retrace guard for tests)
        self._waves = jax.jit(self._waves_impl, donate_argnums=(0, 1, 2, 3))
        self._apply = jax.jit(self._apply_impl, donate_argnums=(0, 1, 2))
        self._evaluate = jax.jit(self._evaluate_impl)
        self._evaluate_compiled: Future | None = None
        if self.kind in ("local_sgd", "easgd"):
            from .local import LocalModels

            self.local = LocalModels(self)

    # ---- jitted pieces -----------------------------------------------------------------------

    def flat_loss(self, shard_rows: jax.Array, worker: jax.Array, k: jax.Array) -> jax.Array:
        params = self.unravel(shard_rows.reshape(-1)[: self.P])
        return self.problem.loss(params, self.problem.make_batch(worker, k))

    def _waves_impl(self, params: jax.Array, state: Any, history: jax.Array, gcache: jax.Array | None, count: jax.Array,
                    grad_ints: jax.Array, row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array,
                    cache_ints: jax.Array | None, store_ints: jax.Array | None) -> tuple:
        """``count`` waves in one call, in order; each computes all its gradients (vmapped), then
        applies its updates in server order (scan).

        grad_ints[w, g] = (history slot read of each shard..., worker, k, valid); row_ints,
        member_ints and weights [w] as in `_scan`, where gradient indices past the G computed
        ones are read from the gradient cache (several shards only: gcache[cache_ints[w, c]];
        computed gradient g is stored to gcache[store_ints[w, g]], see gradcache.py). Returns the
        new (params, state, history, gcache) and per wave whether a loss was NaN, Inf or above
        ``run.max_loss``.
        """
        self.traces += 1
        S = self.S
        grad = jax.vmap(jax.value_and_grad(self.flat_loss))

        def wave(i: jax.Array, carry: tuple) -> tuple:
            params, state, history, gcache, bad = carry
            ints = grad_ints[i]
            read = history[ints[:, :S], jnp.arange(S)[None, :]]  # [G, S, chunk]
            losses, grads = grad(read, ints[:, S], ints[:, S + 1])
            valid = ints[:, S + 2] > 0
            bad = bad.at[i].set(jnp.any(valid & ~(losses <= self.scenario.run.max_loss)))  # NaN compares false
            if gcache is not None:  # read the waiting gradients before storing this wave's
                waiting = gcache[cache_ints[i]]
                gcache = gcache.at[store_ints[i]].set(grads)
                grads = jnp.concatenate([grads, waiting])
            params, state, history = self._scan(params, state, history, grads, row_ints[i], member_ints[i], weights[i])
            return params, state, history, gcache, bad

        # A loop with a run-time trip count: a call with fewer waves costs only the waves it has.
        bad = jnp.zeros(grad_ints.shape[0], bool)
        return jax.lax.fori_loop(0, count, wave, (params, state, history, gcache, bad))

    def _apply_impl(self, params: jax.Array, state: Any, history: jax.Array, grads: jax.Array,
                    row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Apply updates whose (pseudo-)gradients are given (local SGD)."""
        self.traces += 1
        return self._scan(params, state, history, grads, row_ints, member_ints, weights)

    def _scan(self, params: jax.Array, state: Any, history: jax.Array, grads: jax.Array,
              row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Apply update rows in server order, one scan step each.

        row_ints[r] = (shard, history slot of the new version (`scratch` if padding), active); member_ints[r, m] =
        (gradient index, staleness, worker, history slot of the version read); weights[r, m].
        Inactive (padding) rows change nothing.
        """
        rule, needs_read = self.rule, self.rule.needs_read_params
        # DC-ASGD's read parameters are gathered before the loop: every version a wave's gradients
        # read exists at its start, and a gather from the history inside the loop body makes XLA
        # copy the whole ring on every step (measured ~8x slower).
        reads = history[member_ints[:, :, 3], row_ints[:, 0][:, None]] if needs_read else jnp.zeros(len(row_ints))

        if self.S == 1:  # [G, chunk]: gathering rows of [G, 1, chunk] made XLA copy the block every wave
            grads = grads[:, 0]

        def step(carry: tuple, x: tuple) -> tuple:
            params, state, history = carry
            rows, members, weight, read = x
            s, slot, active = rows[0], rows[1], rows[2] > 0
            mine = jax.tree.map(lambda leaf: leaf[s], state)
            read = read if needs_read else None
            mine_grads = grads[members[:, 0]] if self.S == 1 else grads[members[:, 0], s]
            new, new_state = rule.apply(params[s], mine, mine_grads, weights=weight,
                                        staleness=members[:, 1], workers=members[:, 2], read_params=read)
            new = jnp.where(active, new, params[s])
            new_state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, mine)
            if self.S == 1:  # whole arrays: no dynamic update (XLA copied the carried params for it)
                params, state = new[None], jax.tree.map(lambda n: n[None], new_state)
            else:
                params = params.at[s].set(new)
                state = jax.tree.map(lambda leaf, n: leaf.at[s].set(n), state, new_state)
            history = history.at[slot, s].set(new)  # padding rows write the scratch row
            return (params, state, history), None

        (params, state, history), _ = jax.lax.scan(step, (params, state, history), (row_ints, member_ints, weights, reads))
        return params, state, history

    def _evaluate_impl(self, params: jax.Array) -> dict[str, jax.Array]:
        self.traces += 1
        return self.problem.evaluate(self.unravel(params.reshape(-1)[: self.P]))

    def evaluate(self, params: jax.Array | None = None) -> dict[str, float]:
        """The problem's metrics at ``params`` (default: the server's parameters now)."""
        params = self.params if params is None else params
        evaluate = self._evaluate_compiled.result() if self._evaluate_compiled is not None else self._evaluate
        return {key: float(value) for key, value in evaluate(params).items()}

    def compile_evaluation_in_background(self) -> None:
        """Compile the evaluation on another thread while the first waves compile and run (XLA
        releases the GIL while it compiles; a cold start is ~0.1 s shorter on 2 cores)."""
        if self._evaluate_compiled is None:
            lowered = self._evaluate.lower(self.params)  # (traced here: shapes only)
            self._evaluate_compiled = ThreadPoolExecutor(1).submit(lowered.compile)

    def current_params(self) -> Any:
        """The server's parameters now, as the problem's pytree."""
        return self.unravel(self.params.reshape(-1)[: self.P])

    # ---- host side: waves --------------------------------------------------------------------

    @property
    def scratch(self) -> int:
        """The history row padding rows write: past the slots, so no version lives there."""
        return self.slots.capacity

    def logical_updates(self) -> int:
        return int(self.versions.min())

    def pending_rows(self, tr: TraceBuilder) -> int:
        return tr.num_update_rows - self.row

    def _initial_capacity(self) -> int:
        """History slots to start with: the versions in-flight gradients read (about one per
        worker) plus each shard's newest, twice over so that collections are rare, within
        HISTORY_BUDGET_BYTES; the history grows when a run needs more."""
        return self._slots_within(2 * (self.M + 1) + 4 * self.rows_per_wave, HISTORY_BUDGET_BYTES, 4 * self.rows_per_wave)

    def _slots_within(self, wanted: int, budget_bytes: int, floor: int) -> int:
        """Slots of one parameter vector each: ``wanted`` rounded up to a power of two, cut to the
        largest power of two that fits ``budget_bytes``, and at least ``floor``."""
        fits = budget_bytes // (4 * self.S * self.chunk)
        return max(min(_bucket(wanted), _bucket(fits + 1) // 2), floor)

    def run_call(self, tr: TraceBuilder, eval_every: int, limit: float) -> None:
        """Plan waves from the pending update rows and dispatch them as one device call
        (asynchronously: the host goes on while the device computes).

        A wave is a run of update rows whose gradients read only versions that exist at its
        start; the call ends at an evaluation point, at ``limit`` logical updates, after
        ``waves_per_call`` waves, or when the history needs to grow.
        """
        if self.kind in ("local_sgd", "easgd"):
            start = self.row
            end = start + self._rows_to_cut(tr, start, tr.num_update_rows, eval_every, limit)
            if not self.local.run_rows(tr, start, end):
                self.flags.append((np.array([start]), jnp.ones(1, bool)))
                self.check_now = True
            return
        self.make_room(tr, self.max_rows)
        if self.cache is not None:
            self._forget_settled(tr)
        start = self.row
        bounds, read_slots, write_slots, versions = self._plan(tr, eval_every, limit)
        inputs = self._call_inputs(tr, start, bounds, read_slots, write_slots)
        count = np.int32(len(bounds) - 1)
        self.computed += int(inputs[0][..., self.S + 2].sum())
        self.params, self.state, self.history, self.gcache, bad = self._waves(
            self.params, self.state, self.history, self.gcache, count, *inputs)
        self.flags.append((start + bounds[:-1], bad))
        self.waves += int(count)
        self.versions = versions
        self._advance(tr, start, start + int(bounds[-1]))

    def _cache_capacity(self) -> int:
        """Gradients that may wait for their other shards: about one push per worker."""
        return self._slots_within(2 * self.M + 4 * self.max_rows, HISTORY_BUDGET_BYTES // 2, 2 * self.max_rows)

    def _advance(self, tr: TraceBuilder, start: int, end: int) -> None:
        """Rows [start, end) are dispatched: count the staleness of the gradients they apply."""
        self.row = end
        offsets = _col(tr.u_offsets, np.int64)
        gids = _col(tr.u_gid, np.int64)[offsets[start]:offsets[end]]
        if self.S > 1:  # a gradient has a row per shard; count it once
            gids = np.unique(gids)
            counted = self._counted(tr.num_gradients)
            gids = gids[~counted[gids]]
            counted[gids] = True
        stale = _col(tr.staleness, np.int64)[gids]
        applied = _col(tr.fate, np.int8)[gids] == APPLIED
        self.stale_sum += float(stale[applied].sum())
        self.stale_count += int(applied.sum())

    def _counted(self, n: int) -> np.ndarray:
        if len(self.counted) < n:
            self.counted = np.concatenate([self.counted, np.zeros(max(n - len(self.counted), len(self.counted)), bool)])
        return self.counted

    def diverged(self, tr: TraceBuilder) -> bool:
        """Whether any wave so far saw a NaN/Inf or too-large loss (waits for the device)."""
        for wave_rows, bad in self.flags:
            flags = np.asarray(bad)[: len(wave_rows)]
            if flags.any():
                self.diverged_at = int(_col(tr.u_version, np.int64)[wave_rows[int(np.argmax(flags))]])
                # Keep self.row: the waves dispatched after this one were applied too, so the run
                # (trace, metrics, parameters) ends after them, not at this wave's end.
                return True
        self.flags.clear()
        return False

    def staleness_mean(self) -> float:
        return self.stale_sum / self.stale_count if self.stale_count else 0.0
