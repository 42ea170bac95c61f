"""Numerics of algorithms whose workers keep a local model: local SGD and EASGD.

Local SGD (periodic model averaging): each worker starts a round from the server's parameters,
takes ``local_steps`` plain SGD steps with ``optimizer.learning_rate``, and pushes its model
change. The server treats -delta/lr as a pseudo-gradient and runs its optimizer on the weighted
average; with plain SGD that is exactly model averaging, so local SGD with H = 1 is minibatch SGD
(THEORY.md C11).

EASGD (Zhang, Choromanska, LeCun 2015, arXiv:1412.6651), asynchronous form: worker i keeps its own
x_i across exchanges; after ``local_steps`` local steps it exchanges with the center under the
server lock: d = alpha (x_i - x_center); x_i -= d; x_center += d, which conserves
sum_i x_i + x_center exactly.

`LocalModels.run_rows` applies update rows of the trace and returns the new server arrays; the
numerics engine keeps them. The workers' own models (EASGD's x_i) are this object's state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..scenario.config import Scenario
from ..trace import TraceBuilder
from .layout import Layout
from .planner import WavePlanner, column

__all__ = ["LocalModels", "LocalOutcome"]


@dataclass
class LocalOutcome:
    """What `LocalModels.run_rows` leaves: the server's arrays, and what it computed and counted.
    ``ok`` is False when a local loss diverged (rows from the planner's ``row`` on never apply)."""

    params: jax.Array
    state: Any
    history: jax.Array
    ok: bool
    computed: int
    stale_sum: float
    stale_count: int


class LocalModels:
    """Local SGD (``update = "local_average"``) or EASGD (``"elastic"``) over the server arrays.

    ``apply`` is the numerics engine's jitted scan (params, state, history, pseudo-gradients, row
    tables) -> (params, state, history); ``members_max`` the width it was compiled for.
    """

    def __init__(self, scenario: Scenario, update: str, layout: Layout, params: jax.Array, apply: Callable[..., tuple],
                 *, members_max: int) -> None:
        self.scenario, self.elastic, self.layout = scenario, update == "elastic", layout
        self.S, self.M, self.members_max = layout.S, scenario.num_workers, members_max
        self.lr = float(scenario.optimizer.learning_rate)
        self.alpha = float(scenario.algorithm.elastic_alpha)
        self.max_loss = scenario.run.max_loss
        self.apply = apply
        self.models = jnp.broadcast_to(params, (self.M, *params.shape))  # EASGD's x_i
        self.traces = 0  # compilations of the jitted functions below
        self._steps = jax.jit(self._steps_impl)
        self._exchange = jax.jit(self._exchange_impl)
        self._cache: tuple[int, Any] | None = None  # the last push's local result, reused by each shard's row

    def reset(self, params: jax.Array) -> None:
        """Every worker's model back to ``params`` (the engine restarts from update 0)."""
        self.models = jnp.broadcast_to(params, (self.M, *params.shape))
        self._cache = None

    def _steps_impl(self, start: jax.Array, workers: jax.Array, ks: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``ks.shape[1]`` local SGD steps for each worker from ``start[w]`` (vmapped over workers)."""
        self.traces += 1
        grad = jax.value_and_grad(self.layout.flat_loss)

        def one(x: jax.Array, worker: jax.Array, kk: jax.Array) -> tuple[jax.Array, jax.Array]:
            def step(x: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
                loss, g = grad(x, worker, k)
                return x - self.lr * g, loss

            return jax.lax.scan(step, x, kk)

        return jax.vmap(one)(start, workers, ks)

    def _exchange_impl(self, center: jax.Array, models: jax.Array, worker: jax.Array, shard: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The elastic exchange of one shard: d = alpha (x_i - x_center); x_i -= d; x_center += d."""
        self.traces += 1
        diff = self.alpha * (models[worker, shard] - center[shard])
        return center.at[shard].add(diff), models.at[worker, shard].add(-diff)

    def _local_run(self, tr: TraceBuilder, gids: np.ndarray, start: jax.Array) -> tuple[np.ndarray, jax.Array, np.ndarray, np.ndarray]:
        """Group a push's gradient rows by worker and run each worker's local steps."""
        workers_all = column(tr.worker, np.int32)[gids]
        order = np.lexsort((column(tr.local_step, np.int32)[gids], workers_all))
        gids, workers_all = gids[order], workers_all[order]
        workers, first = np.unique(workers_all, return_index=True)
        steps = len(gids) // len(workers)
        ks = column(tr.k, np.int64)[gids].reshape(len(workers), steps)
        final, losses = self._steps(start, jnp.asarray(workers, jnp.int32), jnp.asarray(ks, jnp.int32))
        return workers, final, np.asarray(losses), gids[first]

    def run_rows(self, tr: TraceBuilder, start: int, end: int, planner: WavePlanner, params: jax.Array, state: Any,
                 history: jax.Array) -> LocalOutcome:
        """Apply update rows [start, end) of ``tr``; the planner's cursor and versions follow."""
        out = LocalOutcome(params, state, history, True, 0, 0.0, 0)
        offsets = column(tr.u_offsets, np.int64)[start:end + 1]
        for r in range(start, end):
            lo, hi = offsets[r - start], offsets[r - start + 1]
            gids = column(tr.u_gid, np.int64)[lo:hi]
            shard = int(column(tr.u_shard, np.int32)[r])
            key = int(gids.min())
            if self._cache is None or self._cache[0] != key:
                if self.elastic:
                    worker = int(column(tr.worker, np.int32)[gids[0]])
                    origin = self.models[worker][None]
                else:  # every worker of a local-SGD round starts from the version it read
                    reads = column(tr.read_version, np.int64).reshape(-1, self.S)[gids[:1]]
                    origin = out.history[planner.slots.lookup(reads), jnp.arange(self.S)[None, :]]
                    origin = jnp.broadcast_to(origin, (len(np.unique(column(tr.worker, np.int32)[gids])), self.S, self.layout.chunk))
                workers, final, losses, heads = self._local_run(tr, gids, origin)
                out.computed += len(gids)
                if not np.all(losses <= self.max_loss):  # NaN, Inf or blow-up
                    planner.row = r  # rows before r were applied; this one and the rest never will be
                    out.ok = False
                    return out
                self._cache = (key, (workers, final, origin, heads))
                if self.elastic:  # the worker's model after its local steps, before the exchange
                    self.models = self.models.at[int(workers[0])].set(final[0])
            workers, final, origin, heads = self._cache[1]
            if self.elastic:
                out.params, self.models = self._exchange(out.params, self.models, jnp.int32(workers[0]), jnp.int32(shard))
            else:
                pseudo = (origin - final) / self.lr
                grow, inputs = self._row_inputs(tr, r, heads, float(column(tr.u_weight, np.float64)[lo]), planner)
                if grow:
                    out.history = jnp.pad(out.history, ((0, grow), (0, 0), (0, 0)))
                out.params, out.state, out.history = self.apply(out.params, out.state, out.history,
                                                                _pad(pseudo, self.members_max), *inputs)
            planner.versions[shard] += 1
            stale = column(tr.staleness, np.int64)[gids]
            out.stale_sum += float(stale.sum())
            out.stale_count += len(gids)
            planner.row = r + 1
        return out

    def _row_inputs(self, tr: TraceBuilder, r: int, heads: np.ndarray, weight: float,
                    planner: WavePlanner) -> tuple[int, tuple[np.ndarray, ...]]:
        """The history growth needed, and the scan's inputs for update row r, one pseudo-gradient per
        worker (``heads``: a gradient of each), padded to two rows (a one-step scan copies the history)."""
        shard, version = int(column(tr.u_shard, np.int32)[r]), int(column(tr.u_version, np.int64)[r])
        grow = planner.make_room(tr, 1)
        reads = column(tr.read_version, np.int64).reshape(-1, self.S)[heads, shard]
        row_ints = np.zeros((2, 3), np.int32)
        row_ints[1, 1] = planner.scratch
        row_ints[0] = (shard, planner.slots.store(shard, np.array([version]))[0], 1)
        member_ints = np.zeros((2, self.members_max, 4), np.int32)
        member_ints[0, :len(heads)] = np.stack([np.arange(len(heads)), version - 1 - reads, column(tr.worker, np.int32)[heads],
                                                planner.slots.lookup(reads, np.full(len(heads), shard))], axis=1)
        weights = np.zeros((2, self.members_max), np.float32)
        weights[0, :len(heads)] = weight
        return grow, (row_ints, member_ints, weights)


def _pad(grads: jax.Array, rows: int) -> jax.Array:
    if grads.shape[0] >= rows:
        return grads
    return jnp.concatenate([grads, jnp.zeros((rows - grads.shape[0], *grads.shape[1:]), grads.dtype)])
