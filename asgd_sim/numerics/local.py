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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from .planner import _col
from ..trace import TraceBuilder

if TYPE_CHECKING:
    from .engine import NumericsEngine

__all__ = ["LocalModels"]


class LocalModels:
    def __init__(self, numerics: NumericsEngine) -> None:
        self.n = numerics
        self.lr = float(numerics.scenario.optimizer.learning_rate)
        self.alpha = float(numerics.scenario.algorithm.elastic_alpha)
        self.models = jnp.broadcast_to(numerics.params, (numerics.M, *numerics.params.shape))  # EASGD's x_i
        self._steps = jax.jit(self._steps_impl)
        self._exchange = jax.jit(self._exchange_impl)
        self._cache: tuple[int, Any] | None = None  # the last push's local result, reused by each shard's row

    def _steps_impl(self, start: jax.Array, workers: jax.Array, ks: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``ks.shape[1]`` local SGD steps for each worker from ``start[w]`` (vmapped over workers)."""
        self.n.traces += 1
        grad = jax.value_and_grad(self.n.flat_loss)

        def one(x: jax.Array, worker: jax.Array, kk: jax.Array) -> tuple[jax.Array, jax.Array]:
            def step(x: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
                loss, g = grad(x, worker, k)
                return x - self.lr * g, loss

            return jax.lax.scan(step, x, kk)

        return jax.vmap(one)(start, workers, ks)

    def _exchange_impl(self, center: jax.Array, models: jax.Array, worker: jax.Array, shard: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The elastic exchange of one shard: d = alpha (x_i - x_center); x_i -= d; x_center += d."""
        self.n.traces += 1
        diff = self.alpha * (models[worker, shard] - center[shard])
        return center.at[shard].add(diff), models.at[worker, shard].add(-diff)

    def _local_run(self, tr: TraceBuilder, gids: np.ndarray, start: jax.Array) -> tuple[np.ndarray, jax.Array, np.ndarray, np.ndarray]:
        """Group a push's gradient rows by worker and run each worker's local steps."""
        workers_all = _col(tr.worker, np.int32)[gids]
        order = np.lexsort((_col(tr.local_step, np.int32)[gids], workers_all))
        gids, workers_all = gids[order], workers_all[order]
        workers, first = np.unique(workers_all, return_index=True)
        steps = len(gids) // len(workers)
        ks = _col(tr.k, np.int64)[gids].reshape(len(workers), steps)
        final, losses = self._steps(start, jnp.asarray(workers, jnp.int32), jnp.asarray(ks, jnp.int32))
        return workers, final, np.asarray(losses), gids[first]

    def run_rows(self, tr: TraceBuilder, start: int, end: int) -> bool:
        n = self.n
        offsets = _col(tr.u_offsets, np.int64)[start:end + 1]
        for r in range(start, end):
            lo, hi = offsets[r - start], offsets[r - start + 1]
            gids = _col(tr.u_gid, np.int64)[lo:hi]
            shard = int(_col(tr.u_shard, np.int32)[r])
            key = int(gids.min())
            if self._cache is None or self._cache[0] != key:
                if n.kind == "easgd":
                    worker = int(_col(tr.worker, np.int32)[gids[0]])
                    origin = self.models[worker][None]
                else:  # every worker of a local-SGD round starts from the version it read
                    reads = _col(tr.read_version, np.int64).reshape(-1, n.S)[gids[:1]]
                    origin = n.history[n.slots.lookup(reads), jnp.arange(n.S)[None, :]]
                    origin = jnp.broadcast_to(origin, (len(np.unique(_col(tr.worker, np.int32)[gids])), n.S, n.chunk))
                workers, final, losses, heads = self._local_run(tr, gids, origin)
                n.computed += len(gids)
                if not np.all(losses <= n.scenario.run.max_loss):  # NaN, Inf or blow-up
                    n.row = r  # rows before r were applied; this one and the rest never will be
                    return False
                self._cache = (key, (workers, final, origin, heads))
                if n.kind == "easgd":  # the worker's model after its local steps, before the exchange
                    self.models = self.models.at[int(workers[0])].set(final[0])
            workers, final, origin, heads = self._cache[1]
            if n.kind == "easgd":
                n.params, self.models = self._exchange(n.params, self.models, jnp.int32(workers[0]), jnp.int32(shard))
            else:
                pseudo = (origin - final) / self.lr
                inputs = self._row_inputs(tr, r, heads, float(_col(tr.u_weight, np.float64)[lo]))
                n.params, n.state, n.history = n._apply(n.params, n.state, n.history, _pad(pseudo, n.members_max), *inputs)
            n.versions[shard] += 1
            stale = _col(tr.staleness, np.int64)[gids]
            n.stale_sum += float(stale.sum())
            n.stale_count += len(gids)
            n.row = r + 1
        return True

    def _row_inputs(self, tr: TraceBuilder, r: int, heads: np.ndarray, weight: float) -> tuple[np.ndarray, ...]:
        """`NumericsEngine._scan`'s inputs for update row r, one pseudo-gradient per worker
        (``heads``: a gradient of each), padded to two rows (a one-step scan copies the history)."""
        n = self.n
        shard, version = int(_col(tr.u_shard, np.int32)[r]), int(_col(tr.u_version, np.int64)[r])
        n.make_room(tr, 1)
        reads = _col(tr.read_version, np.int64).reshape(-1, n.S)[heads, shard]
        row_ints = np.zeros((2, 3), np.int32)
        row_ints[1, 1] = n.scratch
        row_ints[0] = (shard, n.slots.store(shard, np.array([version]))[0], 1)
        member_ints = np.zeros((2, n.members_max, 4), np.int32)
        member_ints[0, :len(heads)] = np.stack([np.arange(len(heads)), version - 1 - reads, _col(tr.worker, np.int32)[heads],
                                                n.slots.lookup(reads, np.full(len(heads), shard))], axis=1)
        weights = np.zeros((2, n.members_max), np.float32)
        weights[0, :len(heads)] = weight
        return row_ints, member_ints, weights


def _pad(grads: jax.Array, rows: int) -> jax.Array:
    if grads.shape[0] >= rows:
        return grads
    return jnp.concatenate([grads, jnp.zeros((rows - grads.shape[0], *grads.shape[1:]), grads.dtype)])
