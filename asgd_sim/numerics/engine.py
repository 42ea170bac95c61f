"""The numerics engine: every gradient is a real JAX gradient at the exact stale parameters read.

It folds a trace into parameters. The parallelism of asynchronous SGD is its staleness
(docs/DESIGN.md): gradient g needs only the version its worker read, so every gradient whose read
version already exists is computed together in one ``jax.vmap`` call, and the updates that use
them are then applied in server order by one jitted ``lax.scan``. A run is a sequence of such
*waves*; with M workers a wave holds about M updates.

Several waves go to the device as one call (a loop on the device), so the host pays one dispatch
per call; a call ends at an evaluation point.

Layout on the device (`layout.Layout`):
- parameters are one flat float32 vector split into S equal shard rows, ``params[S, chunk]``
  (padded with zeros that no loss touches), so a shard update is a row update;
- the optimizer state is stacked per shard (``vmap(rule.init)``), so each shard has its own;
- ``history[C, S, chunk]`` holds the past versions that gradients may still read: each shard's
  newest version and those read by gradients not yet computed. Which slot holds which version is
  kept on the host (history.py); slots of versions nobody can read any more are reused, and the
  history grows (doubling) only when the versions still to be read fill most of it, so memory
  follows the staleness in flight, not the length of the run.
Shapes are fixed per run (padded rows and waves are no-ops), so after warm-up nothing retraces.
The host side (which rows form each wave, the history slots, the padded tables of a call) is the
engine's `planner.WavePlanner`; updates that combine local models rather than gradients (local
SGD, EASGD) are `local.LocalModels`.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..algorithms import make_policy
from ..errors import ScenarioError
from ..scenario.config import Scenario
from ..trace import APPLIED, TraceBuilder
from .compile_cache import enable_compilation_cache
from .layout import Layout
from .planner import POOLED_ROWS_PER_CALL, PooledPlan, WavePlanner, column
from .problems import Problem, build_problem
from .rules import make_server_rule

__all__ = ["NumericsEngine"]


class NumericsEngine:
    """Consumes a timing engine's trace as it grows and computes the parameters it implies."""

    def __init__(self, scenario: Scenario, problem: Problem | None = None) -> None:
        enable_compilation_cache()
        self.scenario = sc = scenario
        self.M, self.S = sc.num_workers, sc.server.shards
        policy = make_policy(sc)
        self.model_update, self.local_steps = policy.model_update, policy.local_steps
        self.problem = problem or build_problem(sc, self.M)
        self.layout = layout = Layout(self.problem, self.S, sc.run.seed)
        self.P, self.chunk = layout.P, layout.chunk
        if layout.state_mask is not None and self.model_update != "gradient":
            raise ScenarioError("algorithm.kind", f"= {sc.algorithm.kind!r}: its workers push models, not gradients, and "
                                f"{self.problem.name}'s loss takes mutable state, which then has no defined update; use a "
                                "gradient algorithm (async, sync, k_*, ssp, rennala, ringmaster) or a loss without state")
        self.rule = make_server_rule(sc.optimizer, self.M)
        self.members_max = policy.gradients_per_update
        self.computed = 0  # gradients computed (with shards, some are read from the cache instead)
        self.waves = 0  # vmapped gradient calls so far
        self._traces = 0  # compilations of this engine's jitted functions
        self._waves = jax.jit(self._waves_impl, donate_argnums=(0, 1, 2, 3))
        self._pooled = jax.jit(self._pooled_impl, donate_argnums=(0, 1, 2))
        self._evaluate = jax.jit(self._evaluate_impl)
        self._evaluate_compiled: Future | None = None
        self._init_state = jax.jit(jax.vmap(self.rule.init))
        self.local: Any = None
        self._start()

    def _start(self) -> None:
        """The run state at update 0: the initial parameters and optimizer state, an empty
        history and a planner at the first row of the trace."""
        sc, layout = self.scenario, self.layout
        self.params = jax.device_put(layout.initial)
        self.state = self._init_state(self.params)
        gradient_updates = self.model_update == "gradient"
        self.planner = planner = WavePlanner(self.M, self.S, self.members_max, sc.run.batch_cap, self.chunk,
                                             on_cpu=jax.default_backend() == "cpu", cached=self.S > 1 and gradient_updates)
        # Rows whose gradients all read the parameters just before them (rounds) are one backward
        # pass over their members' batches together (`_pooled_impl`): one shard, gradient
        # updates, and a rule linear in the gradients (DC-ASGD's compensation is not).
        planner.pooling = (self.S == 1 and gradient_updates and self.members_max > 1 and not self.rule.needs_read_params
                           and layout.state_mask is None)  # (a stateful model's state changes are per gradient)
        # One more row than slots: the scratch row that padding rows write (`planner.scratch`).
        history = np.zeros((planner.slots.capacity + 1, self.S, self.chunk), np.float32)
        history[0] = layout.initial
        self.history = jax.device_put(history)
        cache = planner.cache
        self.gcache = jnp.zeros((cache.capacity + 1, self.S, self.chunk), jnp.float32) if cache is not None else None  # (+ scratch)
        self.counted = np.zeros(0, bool)  # with shards: gradients whose staleness is counted
        self.stale_sum = 0.0
        self.stale_count = 0
        self.flags: list[tuple[np.ndarray, jax.Array]] = []  # per call: first row of each wave, any loss bad
        self.check_now = False  # a divergence already known on the host
        self.diverged_at: int | None = None
        if not gradient_updates:
            from .local import LocalModels

            if self.local is None:
                pushes_max = -(-self.members_max // self.local_steps)  # (an update's pushes, each of local_steps rows)
                self.local = LocalModels(sc, self.model_update, layout, self.params, self._apply_row,
                                         members_max=pushes_max, needs_read=self.rule.needs_read_params)
            else:
                self.local.reset(self.params)

    def restart(self) -> None:
        """Back to update 0, to fold the same trace again (e.g. to locate where a target was
        crossed between two evaluations, `stream.locate_crossing`). The compiled functions are
        kept; the counters of work done (``computed``, ``waves``) go on counting."""
        self._start()

    @property
    def traces(self) -> int:
        """Compilations of the jitted functions so far (a no-retrace guard for tests)."""
        return self._traces + (self.local.traces if self.local is not None else 0)

    @property
    def row(self) -> int:
        """The next update row of the trace to apply."""
        return self.planner.row

    def logical_updates(self) -> int:
        return self.planner.logical_updates()

    def pending_rows(self, tr: TraceBuilder) -> int:
        return self.planner.pending_rows(tr)

    # ---- jitted pieces -----------------------------------------------------------------------

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
        self._traces += 1
        S = self.S
        grad = jax.vmap(self.layout.value_and_grad)

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

    def _pooled_impl(self, params: jax.Array, state: Any, history: jax.Array, count: jax.Array,
                     row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """``count`` shared-read rows in order (one shard; see `planner.WavePlanner.plan_pooled`).

        Row r's update combines gradients that all read the server's parameters as they are when
        it comes, so their weighted sum is the gradient of one loss, sum_m weight_m * loss_m, at
        those parameters: one value_and_grad over the members' mini-batches together (vmapped
        with the parameters shared, which XLA makes one matrix product per layer instead of one
        per member), then the server rule on that single gradient. The same numbers as summing
        the members' gradients, up to float rounding. Returns the new (params, state, history)
        and per row whether a member's loss was NaN, Inf or above ``run.max_loss``.
        """
        self._traces += 1
        rule, max_loss = self.rule, self.scenario.run.max_loss
        losses_at = jax.vmap(self.layout.flat_loss, in_axes=(None, 0, 0))

        def pooled_loss(rows: jax.Array, members: jax.Array, weight: jax.Array) -> tuple:
            losses = losses_at(rows, members[:, 0], members[:, 1])
            return jnp.sum(jnp.where(weight > 0, weight * losses, 0.0)), losses

        grad = jax.value_and_grad(pooled_loss, has_aux=True)

        def row(r: jax.Array, carry: tuple) -> tuple:
            params, state, history, bad = carry
            ints, members, weight = row_ints[r], member_ints[r], weights[r]
            (_, losses), g = grad(params, members, weight)
            bad = bad.at[r].set(jnp.any((weight > 0) & ~(losses <= max_loss)))  # NaN compares false
            mine = jax.tree.map(lambda leaf: leaf[0], state)
            new, new_state = rule.apply(params[0], mine, g, weights=jnp.ones(1, jnp.float32),
                                        staleness=ints[1:2], workers=ints[2:3], read_params=None)
            history = history.at[ints[0], 0].set(new)
            return new[None], jax.tree.map(lambda n: n[None], new_state), history, bad

        bad = jnp.zeros(row_ints.shape[0], bool)
        return jax.lax.fori_loop(0, count, row, (params, state, history, bad))

    def _scan(self, params: jax.Array, state: Any, history: jax.Array, grads: jax.Array,
              row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Apply update rows in server order, one scan step (`_apply_row`) each.

        row_ints[r] = (shard, history slot of the new version (the planner's scratch if padding), active); member_ints[r, m] =
        (gradient index, staleness, worker, history slot of the version read); weights[r, m].
        Inactive (padding) rows change nothing.
        """
        needs_read = self.rule.needs_read_params
        # DC-ASGD's read parameters are gathered before the loop: every version a wave's gradients
        # read exists at its start, and a gather from the history inside the loop body makes XLA
        # copy the whole ring on every step (measured ~8x slower).
        reads = history[member_ints[:, :, 3], row_ints[:, 0][:, None]] if needs_read else jnp.zeros(len(row_ints))

        if self.S == 1:  # [G, chunk]: gathering rows of [G, 1, chunk] made XLA copy the block every wave
            grads = grads[:, 0]

        def step(carry: tuple, x: tuple) -> tuple:
            rows, members, weight, read = x
            mine_grads = grads[members[:, 0]] if self.S == 1 else grads[members[:, 0], rows[0]]
            return self._apply_row(*carry, mine_grads, rows, members, weight, read if needs_read else None), None

        (params, state, history), _ = jax.lax.scan(step, (params, state, history), (row_ints, member_ints, weights, reads))
        return params, state, history

    def _apply_row(self, params: jax.Array, state: Any, history: jax.Array, grads: jax.Array, rows: jax.Array,
                   members: jax.Array, weight: jax.Array, read: jax.Array | None) -> tuple:
        """One update row: the server rule on its gradients' shard rows ``grads [members, chunk]``
        (rows = (shard, history slot of the new version, active), members and weight as in
        `_scan`; ``read``: the shard rows they were computed at, DC-ASGD only). Returns the new
        (params, state, history); an inactive row changes nothing."""
        rule = self.rule
        state_mask = None if self.layout.state_mask is None else jnp.asarray(self.layout.state_mask)
        s, slot, active = rows[0], rows[1], rows[2] > 0
        mine = jax.tree.map(lambda leaf: leaf[s], state)
        new, new_state = rule.apply(params[s], mine, grads, weights=weight, staleness=members[:, 1], workers=members[:, 2],
                                    read_params=read)
        if state_mask is not None:  # a model's state moves by the mean change of the update's gradients (user_problem)
            live = weight > 0
            share = jnp.where(live, weight, 0.0) / jnp.maximum(jnp.sum(jnp.where(live, weight, 0.0)), 1e-30)
            change = jnp.dot(share, jnp.where(live[:, None], grads, 0.0), precision=jax.lax.Precision.HIGHEST)
            new = jnp.where(state_mask[s], params[s] - change, new)
        new = jnp.where(active, new, params[s])
        new_state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, mine)
        if self.S == 1:  # whole arrays: no dynamic update (XLA copied the carried params for it)
            params, state = new[None], jax.tree.map(lambda n: n[None], new_state)
        else:
            params = params.at[s].set(new)
            state = jax.tree.map(lambda leaf, n: leaf.at[s].set(n), state, new_state)
        history = history.at[slot, s].set(new)  # padding rows write the scratch row
        return params, state, history

    def _evaluate_impl(self, params: jax.Array) -> dict[str, jax.Array]:
        self._traces += 1
        return self.problem.evaluate(self.layout.unravel(params.reshape(-1)[: self.P]))

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
        return self.layout.unravel(self.params.reshape(-1)[: self.P])

    # ---- running the trace ---------------------------------------------------------------------

    def run_call(self, tr: TraceBuilder, eval_every: int, limit: float) -> None:
        """Dispatch the next device call planned from the pending update rows (asynchronously:
        the host goes on while the device computes); see `WavePlanner.plan_call`."""
        planner = self.planner
        if self.local is not None:
            start = planner.row
            end = start + planner.rows_to_cut(tr, start, tr.num_update_rows, eval_every, limit)
            outcome = self.local.run_rows(tr, start, end, planner, self.params, self.state, self.history)
            self.params, self.state, self.history = outcome.params, outcome.state, outcome.history
            self.computed += outcome.computed
            self.stale_sum += outcome.stale_sum
            self.stale_count += outcome.stale_count
            if not outcome.ok:
                self.flags.append((np.array([start]), jnp.ones(1, bool)))
                self.check_now = True
            return
        if planner.pooling:
            self._grow_history(planner.make_room(tr, min(POOLED_ROWS_PER_CALL, planner.pending_rows(tr))))
            pooled = planner.plan_pooled(tr, eval_every, limit)
            if pooled is not None:
                self._run_pooled(tr, pooled)
                return
        self._grow_history(planner.make_room(tr, planner.max_rows))
        plan = planner.plan_call(tr, eval_every, limit)
        self.computed += int(plan.inputs[0][..., self.S + 2].sum())
        self.params, self.state, self.history, self.gcache, bad = self._waves(
            self.params, self.state, self.history, self.gcache, np.int32(plan.waves), *plan.inputs)
        self.flags.append((plan.start + plan.bounds[:-1], bad))
        self.waves += plan.waves
        self._count_staleness(tr, plan.start, plan.end)

    def _run_pooled(self, tr: TraceBuilder, plan: PooledPlan) -> None:
        self.params, self.state, self.history, bad = self._pooled(
            self.params, self.state, self.history, np.int32(plan.rows), plan.row_ints, plan.member_ints, plan.weights)
        self.computed += plan.computed
        self.flags.append((plan.start + np.arange(plan.rows), bad))
        self.waves += plan.rows
        self._count_staleness(tr, plan.start, plan.end)

    def _grow_history(self, extra: int) -> None:
        if extra:
            self.history = jnp.pad(self.history, ((0, extra), (0, 0), (0, 0)))  # the old scratch row becomes a free slot

    def _count_staleness(self, tr: TraceBuilder, start: int, end: int) -> None:
        """Rows [start, end) are dispatched: count the staleness of the gradients they apply."""
        offsets = column(tr.u_offsets, np.int64)
        gids = column(tr.u_gid, np.int64)[offsets[start]:offsets[end]]
        if self.S > 1:  # a gradient has a row per shard; count it once
            gids = np.unique(gids)
            counted = self._counted(tr.num_gradients)
            gids = gids[~counted[gids]]
            counted[gids] = True
        stale = column(tr.staleness, np.int64)[gids]
        applied = column(tr.fate, np.int8)[gids] == APPLIED
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
                self.diverged_at = int(column(tr.u_version, np.int64)[wave_rows[int(np.argmax(flags))]])
                # Keep the planner's row: the waves dispatched after this one were applied too, so
                # the run (trace, metrics, parameters) ends after them, not at this wave's end.
                return True
        self.flags.clear()
        return False

    def staleness_mean(self) -> float:
        return self.stale_sum / self.stale_count if self.stale_count else 0.0
