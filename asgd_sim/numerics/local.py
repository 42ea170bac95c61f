"""Numerics of algorithms whose workers take local steps and push a model: local SGD, EASGD,
FedBuff and FedAsync.

A push of ``local_steps`` gradient rows is one worker's run of plain SGD steps with the local rate
(``algorithm.local_learning_rate``, default ``optimizer.learning_rate``) from a starting point:
the version it read, or (EASGD) its own model. What the server does with the result is the
policy's ``model_update``:

Local SGD ("local_average", periodic model averaging): the server treats -delta/lr as a
pseudo-gradient and runs its optimizer on the weighted average; with plain SGD at the same rate
that is exactly model averaging, so local SGD with H = 1 is minibatch SGD (THEORY.md C11).

FedBuff ("delta", Nguyen et al. 2022, arXiv:2106.06639): the pseudo-gradient is the model change
itself, origin - final, each push weighted as the trace says (1/sqrt(1 + staleness) / K), through
the server optimizer (its rate is FedBuff's server rate eta_g).

FedAsync ("mix", Xie, Koyejo & Gupta 2019, arXiv:1903.03934): x <- (1 - a) x + a x_worker with
a = algorithm.mixing * s(staleness), s constant, polynomial (1 + tau)^-a or hinge
(1 if tau <= b, else 1 / (a (tau - b) + 1)).

EASGD (Zhang, Choromanska, LeCun 2015, arXiv:1412.6651), asynchronous form: worker i keeps its own
x_i across exchanges; after ``local_steps`` local steps it exchanges with the center under the
server lock: d = alpha (x_i - x_center); x_i -= d; x_center += d, which conserves
sum_i x_i + x_center exactly.

`LocalModels.run_rows` applies update rows of the trace and returns the new server arrays; the
numerics engine keeps them. The workers' own models (EASGD's x_i) are this object's state.

The module's functions are the arithmetic a real run shares (`asgd_sim.backends`): a real worker
takes the same local steps (`local_step_fn`) and ships the same payload (`push_payload`); a real
server combines the same pushes (`push_heads`) and mixes and exchanges with the same formulas
(`mix_rows`, `mixing_weight`, `elastic_exchange`), so a replay of a real trace reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..scenario.config import AlgorithmConfig, Scenario
from ..trace import TraceBuilder
from .layout import Layout
from .planner import WavePlanner, column

__all__ = ["LocalModels", "LocalOutcome", "local_rate", "local_step", "local_step_fn", "push_payload", "push_heads",
           "mix_rows", "mixing_weight", "elastic_exchange"]


def local_rate(scenario: Scenario) -> float:
    """The local steps' rate: ``algorithm.local_learning_rate``, default ``optimizer.learning_rate``."""
    algo = scenario.algorithm
    return float(algo.local_learning_rate if algo.local_learning_rate is not None else scenario.optimizer.learning_rate)


def local_step(layout: Layout, lr: float) -> Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """One plain SGD step on gradient (worker, k)'s mini-batch: (x [S, chunk], worker, k) -> (x - lr g, loss)."""
    grad = jax.value_and_grad(layout.flat_loss)

    def step(x: jax.Array, worker: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, g = grad(x, worker, k)
        return x - lr * g, loss

    return step


def local_step_fn(layout: Layout, lr: float) -> Callable[[tuple, Any, Any], tuple]:
    """jit: (shard rows, worker, k) -> the shard rows after one `local_step` (a real worker's step)."""
    step = local_step(layout, lr)

    def rows_step(rows: tuple, worker: jax.Array, k: jax.Array) -> tuple:
        x, _ = step(jnp.stack(rows), worker, k)
        return tuple(x[s] for s in range(layout.S))

    return jax.jit(rows_step)


def push_payload(update: str, origin: Any, final: Any, lr: float) -> Any:
    """What a push of local steps gives the server (elementwise, so per shard row or whole):
    local_average (origin - final) / lr, delta origin - final, mix and elastic the final model."""
    if update == "local_average":
        return (origin - final) / lr
    if update == "delta":
        return origin - final
    return final


def push_heads(workers: np.ndarray, ks: np.ndarray, local_step_of: np.ndarray) -> tuple[np.ndarray, int]:
    """The pushes an update combines, in (worker, iteration) order: the order of its gradient rows
    (``workers``, ``ks``, ``local_step_of`` per row) and the rows per push; a push's first row (its
    head) is every ``steps``-th of that order."""
    order = np.lexsort((ks, workers))  # a push's rows are consecutive iterations of one worker
    return order, int(local_step_of.max()) + 1


def mix_rows(row: jax.Array, final: jax.Array, weight: jax.Array) -> jax.Array:
    """FedAsync's mix x <- (1 - a) x + a x_worker (Xie et al. 2019)."""
    return (1.0 - weight) * row + weight * final


def mixing_weight(algo: AlgorithmConfig, staleness: int) -> float:
    """FedAsync's a = alpha * s(staleness) (Xie et al. 2019, section 5.2)."""
    alpha, decay, a, b = float(algo.mixing), algo.mixing_decay, float(algo.mixing_a), int(algo.mixing_b)
    if decay == "polynomial":
        return alpha * (1.0 + staleness) ** (-a)
    if decay == "hinge":
        return alpha * (1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0))
    return alpha


def elastic_exchange(center: jax.Array, model: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """EASGD's exchange (Zhang et al. 2015): d = alpha (x_i - x_center); (x_center + d, x_i - d)."""
    diff = alpha * (model - center)
    return center + diff, model + -diff


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


UNROLLED_STEPS = 16  # local steps traced one after the other (more: a loop on the device)


class LocalModels:
    """Local SGD (``update = "local_average"``), FedBuff (``"delta"``), FedAsync (``"mix"``) or EASGD
    (``"elastic"``) over the server arrays.

    ``scan`` is the numerics engine's update scan (params, state, history, pseudo-gradients, row
    tables) -> (params, state, history), traced here into `_apply_push`; ``members_max`` the width
    of its tables.

    Each push costs two device calls (its local steps; the server's combination of it) and no wait:
    whether a local loss diverged is a device flag carried from push to push, which guards every
    write (a row after a bad push changes nothing), and the host reads the flags once per
    `run_rows` call, not once per push.
    """

    def __init__(self, scenario: Scenario, update: str, layout: Layout, params: jax.Array, scan: Callable[..., tuple],
                 *, members_max: int) -> None:
        self.scenario, self.update, self.elastic, self.layout = scenario, update, update == "elastic", layout
        self.S, self.M, self.members_max = layout.S, scenario.num_workers, members_max
        self.lr = local_rate(scenario)
        self.alpha = float(scenario.algorithm.elastic_alpha)
        self.max_loss = scenario.run.max_loss
        self.scan = scan
        self.models = jnp.broadcast_to(params, (self.M, *params.shape)) if self.elastic else None  # EASGD's x_i
        self.traces = 0  # compilations of the jitted functions below
        # EASGD's models ([M, S, chunk]) are donated to single-output calls that write one row: XLA
        # updates them in place there (a call with a second output copied all M models every push).
        self._local = jax.jit(self._local_impl)
        self._set_model = jax.jit(self._set_model_impl, donate_argnums=(0,))
        self._exchange_center = jax.jit(self._exchange_center_impl)
        self._exchange_model = jax.jit(self._exchange_model_impl, donate_argnums=(0,))
        self._mix = jax.jit(self._mix_impl, donate_argnums=(0, 1))
        self._apply_push = jax.jit(self._apply_push_impl, donate_argnums=(0, 1, 2))
        self._cache: tuple[int, Any] | None = None  # the last push's local result, reused by each shard's row
        self._stepped: dict[int, int] = {}  # EASGD: per worker, the push whose local steps its model holds

    def reset(self, params: jax.Array) -> None:
        """Every worker's model back to ``params`` (the engine restarts from update 0)."""
        self.models = jnp.broadcast_to(params, (self.M, *params.shape)) if self.elastic else None
        self._cache = None
        self._stepped = {}

    # ---- jitted pieces -----------------------------------------------------------------------

    def _local_impl(self, history: jax.Array, models: jax.Array | None, read_slots: jax.Array, workers: jax.Array,
                    ks: jax.Array, ok: jax.Array) -> tuple:
        """The local steps of one update's pushes: from the versions they read (history slots
        ``read_slots[push, shard]``) or, EASGD, from the worker's own model; ``ks.shape[1]`` plain
        SGD steps each (vmapped over pushes). Returns (final, origin, ok): ``ok`` stays True
        while every local loss so far is finite and at most ``run.max_loss``."""
        self.traces += 1
        step = local_step(self.layout, self.lr)
        if self.elastic:
            origin = models[workers[0]][None]
        else:
            origin = history[read_slots, jnp.arange(self.S)[None, :]]

        def one(x: jax.Array, worker: jax.Array, kk: jax.Array) -> tuple[jax.Array, jax.Array]:
            if kk.shape[0] > UNROLLED_STEPS:
                return jax.lax.scan(lambda x, k: step(x, worker, k), x, kk)
            losses = []
            for i in range(kk.shape[0]):  # unrolled: XLA:CPU ran these gradients far slower inside a loop body
                x, loss = step(x, worker, kk[i])
                losses.append(loss)
            return x, jnp.stack(losses)

        if origin.shape[0] == 1:  # one push (FedAsync, EASGD): no batch axis
            final, losses = jax.tree.map(lambda a: a[None], one(origin[0], workers[0], ks[0]))
        else:
            final, losses = jax.vmap(one)(origin, workers, ks)
        ok = ok & jnp.all(losses <= self.max_loss)  # NaN compares false
        return final, origin, ok

    def _exchange(self, center: jax.Array, models: jax.Array, worker: np.int32, shard: np.int32,
                  ok: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The elastic exchange of one shard (d = alpha (x_i - x_center); x_i -= d; x_center += d),
        guarded by ``ok``: the new (center, models); ``models`` is donated (updated in place)."""
        new_center = self._exchange_center(center, models, worker, shard, ok)
        return new_center, self._exchange_model(models, center, worker, shard, ok)

    def _set_model_impl(self, models: jax.Array, worker: jax.Array, final: jax.Array, ok: jax.Array) -> jax.Array:
        """EASGD: worker's own model after its local steps (``final[0]``), unless a loss diverged."""
        self.traces += 1
        return models.at[worker].set(jnp.where(ok, final[0], models[worker]))

    def _exchange_center_impl(self, center: jax.Array, models: jax.Array, worker: jax.Array, shard: jax.Array,
                              ok: jax.Array) -> jax.Array:
        """The center's side of the elastic exchange of one shard: x_center + alpha (x_i - x_center)."""
        self.traces += 1
        new_center, _ = elastic_exchange(center[shard], models[worker, shard], self.alpha)
        return center.at[shard].set(jnp.where(ok, new_center, center[shard]))

    def _exchange_model_impl(self, models: jax.Array, center: jax.Array, worker: jax.Array, shard: jax.Array,
                             ok: jax.Array) -> jax.Array:
        """The worker's side, from the center before the exchange: x_i - alpha (x_i - x_center)."""
        self.traces += 1
        _, new_model = elastic_exchange(center[shard], models[worker, shard], self.alpha)
        return models.at[worker, shard].set(jnp.where(ok, new_model, models[worker, shard]))

    def _mix_impl(self, params: jax.Array, history: jax.Array, final: jax.Array, weight: jax.Array, shard: jax.Array,
                  slot: jax.Array, ok: jax.Array) -> tuple[jax.Array, jax.Array]:
        """FedAsync's mix of one shard row, x <- (1 - a) x + a x_worker (``final[0]``: the push's model),
        written to the new version's slot."""
        self.traces += 1
        new = jnp.where(ok, mix_rows(params[shard], final[0, shard], weight), params[shard])
        return params.at[shard].set(new), history.at[slot, shard].set(new)

    def _apply_push_impl(self, params: jax.Array, state: Any, history: jax.Array, origin: jax.Array, final: jax.Array,
                         ok: jax.Array, row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Local SGD and FedBuff: the pushes' pseudo-gradients (`push_payload`) through the server's
        update scan; the row is inactive (changes nothing) unless ``ok``."""
        self.traces += 1
        pseudo = _pad(push_payload(self.update, origin, final, self.lr), self.members_max)
        row_ints = row_ints.at[:, 2].multiply(ok.astype(row_ints.dtype))
        return self.scan(params, state, history, pseudo, row_ints, member_ints, weights)

    # ---- host side ---------------------------------------------------------------------------

    def _pushes(self, tr: TraceBuilder, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pushes an update combines, in (worker, iteration) order: (heads, workers, ks [pushes, H])."""
        workers_all = column(tr.worker, np.int32)[gids]
        ks_all = column(tr.k, np.int64)[gids]
        order, steps = push_heads(workers_all, ks_all, column(tr.local_step, np.int32)[gids])
        gids, workers_all, ks_all = gids[order], workers_all[order], ks_all[order]
        heads = gids[::steps]
        return heads, workers_all[::steps], ks_all.reshape(len(heads), steps)

    def run_rows(self, tr: TraceBuilder, start: int, end: int, planner: WavePlanner, params: jax.Array, state: Any,
                 history: jax.Array) -> LocalOutcome:
        """Apply update rows [start, end) of ``tr``; the planner's cursor and versions follow.

        If a local loss diverged, the rows from the first push that saw it on changed nothing on
        the device, and the outcome (``ok`` False, the planner's cursor, versions and counts) ends
        before that row, as if the rows had been applied one by one up to it."""
        out = LocalOutcome(params, state, history, True, 0, 0.0, 0)
        offsets = column(tr.u_offsets, np.int64)[start:end + 1]
        ok = jnp.ones((), bool)
        checks: list[tuple[int, jax.Array, tuple]] = []  # (row, ok after its local steps, what the host had before it)
        for r in range(start, end):
            lo, hi = offsets[r - start], offsets[r - start + 1]
            gids = column(tr.u_gid, np.int64)[lo:hi]
            shard = int(column(tr.u_shard, np.int32)[r])
            key = int(gids.min())
            if self._cache is None or self._cache[0] != key:
                heads, workers, ks = self._pushes(tr, gids)
                if self.elastic and self._stepped.get(int(workers[0])) == key:
                    # Its rows interleave with another push's (shards updated in parallel): the
                    # worker's model took these local steps already, and its rows not exchanged
                    # yet still hold their result (taking them again would step twice).
                    self._cache = (key, (workers, None, None, heads))
                else:
                    checks.append((r, ok, (planner.versions.copy(), out.computed + len(gids), out.stale_sum, out.stale_count)))
                    reads = column(tr.read_version, np.int64).reshape(-1, self.S)[heads]
                    read_slots = planner.slots.lookup(reads) if not self.elastic else np.zeros_like(reads, np.int32)
                    final, origin, ok = self._local(out.history, self.models, read_slots, workers.astype(np.int32),
                                                    ks.astype(np.int32), ok)
                    out.computed += len(gids)
                    self._cache = (key, (workers, final, origin, heads))
                    if self.elastic:  # the worker's model after its local steps, before the exchange
                        self.models = self._set_model(self.models, np.int32(workers[0]), final, ok)
                        self._stepped[int(workers[0])] = key
            workers, final, origin, heads = self._cache[1]
            if self.elastic:
                out.params, self.models = self._exchange(out.params, self.models, np.int32(workers[0]), np.int32(shard), ok)
            elif self.update == "mix":
                grow, slot = self._new_version_slot(tr, r, planner)
                if grow:
                    out.history = jnp.pad(out.history, ((0, grow), (0, 0), (0, 0)))
                version = int(column(tr.u_version, np.int64)[r])
                stale = version - 1 - int(column(tr.read_version, np.int64).reshape(-1, self.S)[heads[0], shard])
                weight = np.float32(mixing_weight(self.scenario.algorithm, stale))
                out.params, out.history = self._mix(out.params, out.history, final, weight, np.int32(shard), np.int32(slot), ok)
            else:
                member_weight = dict(zip(gids.tolist(), column(tr.u_weight, np.float64)[lo:hi].tolist()))
                grow, inputs = self._row_inputs(tr, r, heads, np.array([member_weight[g] for g in heads.tolist()]), planner)
                if grow:
                    out.history = jnp.pad(out.history, ((0, grow), (0, 0), (0, 0)))
                out.params, out.state, out.history = self._apply_push(out.params, out.state, out.history, origin, final, ok,
                                                                      *inputs)
            planner.versions[shard] += 1
            stale = column(tr.staleness, np.int64)[gids]
            out.stale_sum += float(stale.sum())
            out.stale_count += len(gids)
            planner.row = r + 1
        if checks:
            flags = np.array(jax.device_get([flag for _, flag, _ in checks] + [ok]))  # (one wait per call; no op to compile)
            if not flags.all():
                # checks[i] holds the flag before push i; the first push after which it is False diverged.
                bad = int(np.argmin(flags[1:]))
                r, _, (versions, computed, stale_sum, stale_count) = checks[bad]
                planner.row, planner.versions = r, versions  # rows before r were applied; this one and the rest never will be
                out.computed, out.stale_sum, out.stale_count = computed, stale_sum, stale_count
                out.ok = False
        return out

    def _new_version_slot(self, tr: TraceBuilder, r: int, planner: WavePlanner) -> tuple[int, int]:
        """The history growth needed, and the slot of the version update row r writes."""
        shard, version = int(column(tr.u_shard, np.int32)[r]), int(column(tr.u_version, np.int64)[r])
        grow = planner.make_room(tr, 1)
        return grow, int(planner.slots.store(shard, np.array([version]))[0])

    def _row_inputs(self, tr: TraceBuilder, r: int, heads: np.ndarray, weights: np.ndarray,
                    planner: WavePlanner) -> tuple[int, tuple[np.ndarray, ...]]:
        """The history growth needed, and the scan's inputs for update row r, one pseudo-gradient per
        push (``heads``: its first gradient row; ``weights``: its weight), padded to two rows (a
        one-step scan copies the history)."""
        shard, version = int(column(tr.u_shard, np.int32)[r]), int(column(tr.u_version, np.int64)[r])
        grow, slot = self._new_version_slot(tr, r, planner)
        reads = column(tr.read_version, np.int64).reshape(-1, self.S)[heads, shard]
        row_ints = np.zeros((2, 3), np.int32)
        row_ints[1, 1] = planner.scratch
        row_ints[0] = (shard, slot, 1)
        member_ints = np.zeros((2, self.members_max, 4), np.int32)
        member_ints[0, :len(heads)] = np.stack([np.arange(len(heads)), version - 1 - reads, column(tr.worker, np.int32)[heads],
                                                planner.slots.lookup(reads, np.full(len(heads), shard))], axis=1)
        table = np.zeros((2, self.members_max), np.float32)
        table[0, :len(heads)] = weights
        return grow, (row_ints, member_ints, table)


def _pad(grads: jax.Array, rows: int) -> jax.Array:
    if grads.shape[0] >= rows:
        return grads
    return jnp.concatenate([grads, jnp.zeros((rows - grads.shape[0], *grads.shape[1:]), grads.dtype)])
