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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..scenario.config import AlgorithmConfig, Scenario
from ..trace import TraceBuilder
from .layout import Layout
from .planner import WavePlanner, bucket, column

UNROLLED_STEPS = 16  # local steps traced one after the other (more: a loop on the device)
# Pushes whose local steps one vmapped call takes on a CPU backend: the digits MLP's two local
# steps cost 0.88 ms alone, 0.60 ms per push in twos, 0.51 in fours, 0.87 in eights (the stacked
# models fall out of cache), so an update of 64 pushes is 16 calls of 4. Accelerators take all.
PUSH_BLOCK_CPU = 4

__all__ = ["LocalModels", "LocalOutcome", "local_rate", "local_steps", "local_step_fn", "push_payload", "push_heads",
           "mix_rows", "mixing_weight", "elastic_exchange"]


def local_rate(scenario: Scenario) -> float:
    """The local steps' rate: ``algorithm.local_learning_rate``, default ``optimizer.learning_rate``."""
    algo = scenario.algorithm
    return float(algo.local_learning_rate if algo.local_learning_rate is not None else scenario.optimizer.learning_rate)


def local_steps(layout: Layout, lr: float) -> Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array]]:
    """Plain SGD steps on gradient (worker, k)'s mini-batch for each k of ``ks`` in turn:
    (x [S, chunk], worker, ks) -> (x after the steps, the loss of each step).

    The steps run on the problem's pytree, unravelled from the shard rows once and flattened back
    once: stepping the flat rows (unravel, gradient, ravel, every step) made XLA:CPU fuse the
    gradient's concatenation into the update, element by element (measured 1.2 ms against 0.73 ms
    for the same two steps on the pytree; the numbers are the same, bit for bit). Padding values
    past the P parameters (no loss touches them: their gradient is 0) are kept as they are."""
    problem, P = layout.problem, layout.P
    grad = jax.value_and_grad(lambda params, worker, k: problem.loss(params, problem.make_batch(worker, k)))

    def step(params: Any, worker: jax.Array, k: jax.Array) -> tuple[Any, jax.Array]:
        loss, g = grad(params, worker, k)
        return jax.tree.map(lambda p, d: p - lr * d, params, g), loss

    def steps(x: jax.Array, worker: jax.Array, ks: Any) -> tuple[jax.Array, jax.Array]:
        flat = x.reshape(-1)
        params = layout.unravel(flat[:P])
        if len(ks) > UNROLLED_STEPS:
            params, losses = jax.lax.scan(lambda p, k: step(p, worker, k), params, ks)
        else:
            losses = []
            for k in ks:  # unrolled: XLA:CPU ran these gradients far slower inside a loop body
                params, loss = step(params, worker, k)
                losses.append(loss)
            losses = jnp.stack(losses)
        final = jnp.concatenate([ravel_pytree(params)[0].astype(flat.dtype), flat[P:]])
        return final.reshape(x.shape), losses

    return steps


def local_step_fn(layout: Layout, lr: float) -> Callable[[tuple, Any, Any], tuple]:
    """jit: (shard rows, worker, k) -> the shard rows after one local SGD step (a real worker's
    step: `local_steps` with one k, the simulator's arithmetic)."""
    steps = local_steps(layout, lr)

    def rows_step(rows: tuple, worker: jax.Array, k: jax.Array) -> tuple:
        x, _ = steps(jnp.stack(rows), worker, jnp.reshape(k, (1,)))
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


class LocalModels:
    """Local SGD (``update = "local_average"``), FedBuff (``"delta"``), FedAsync (``"mix"``) or EASGD
    (``"elastic"``) over the server arrays.

    ``apply_row`` is the numerics engine's update of one row (params, state, history, the row's
    pseudo-gradients, its row, member and weight tables, read rows) -> (params, state, history),
    traced here into `_apply_push`; ``members_max`` the most pushes one update combines (the width
    of its tables); ``needs_read``: whether the rule takes the versions the pushes read (DC-ASGD).

    The local steps of several pushes run in one vmapped call: an update's pushes (local SGD,
    FedBuff: in blocks of ``push_block``), or (FedAsync, EASGD on one shard) consecutive updates'
    pushes that do not depend on each other's results (`_wave`). On one shard the server's side
    joins that call (local SGD and FedBuff: the update, after its last block; FedAsync: the
    wave's mixes); otherwise it is one more call per update row (EASGD: the exchange). No call
    waits: whether a local loss diverged is a device flag per push, carried from push to push,
    which guards every write (a row after a bad push changes nothing), and the host reads the
    flags once per `run_rows` call.
    """

    def __init__(self, scenario: Scenario, update: str, layout: Layout, params: jax.Array, apply_row: Callable[..., tuple],
                 *, members_max: int, needs_read: bool = False) -> None:
        self.scenario, self.update, self.elastic, self.layout = scenario, update, update == "elastic", layout
        self.S, self.M, self.members_max = layout.S, scenario.num_workers, members_max
        self.lr = local_rate(scenario)
        self.alpha = float(scenario.algorithm.elastic_alpha)
        self.max_loss = scenario.run.max_loss
        self.apply_row = apply_row
        self.needs_read = needs_read
        self.models = jnp.broadcast_to(params, (self.M, *params.shape)) if self.elastic else None  # EASGD's x_i
        self.traces = 0  # compilations of the jitted functions below
        self.push_block = PUSH_BLOCK_CPU if jax.default_backend() == "cpu" else max(1, members_max)
        # One push per update on one shard (FedAsync, EASGD): the local steps of several updates'
        # pushes run in one call when they do not depend on each other (`_wave`), in waves of one
        # size (padded: a shape first seen late in a run compiled for seconds there). FedAsync's
        # pushes are ready about sqrt(pi M / 2) at a time, as the asynchronous engine's gradients
        # (`WavePlanner.__init__`); EASGD's, of distinct workers, almost always.
        self.single = members_max == 1 and self.S == 1 and update in ("mix", "elastic")
        ready = math.sqrt(math.pi * self.M / 2)
        if not self.single:
            self.wave = 1
        elif self.push_block == 1:  # an accelerator: every ready push
            self.wave = bucket(math.ceil(ready)) if not self.elastic else bucket(self.M)
        else:
            self.wave = self.push_block if self.elastic else min(self.push_block, 1 << (int(ready).bit_length() - 1))
        self.buffer_rows = self.wave if self.single else members_max
        # Local SGD and FedBuff on one shard: an update's last block of local steps and the update
        # itself in one call.
        self.fuse_apply = self.S == 1 and update in ("local_average", "delta")
        # EASGD's models ([M, S, chunk]) are donated to single-output calls that write one row: XLA
        # updates them in place there (a call with a second output copied all M models every push).
        self._local = jax.jit(self._local_impl, donate_argnums=(0,))
        self._set_models = jax.jit(self._set_models_impl, donate_argnums=(0,))
        self._exchange_center = jax.jit(self._exchange_center_impl)
        self._exchange_model = jax.jit(self._exchange_model_impl, donate_argnums=(0,))
        self._mix = jax.jit(self._mix_impl, donate_argnums=(0, 1))
        self._local_mix = jax.jit(self._local_mix_impl, donate_argnums=(0, 1, 2))
        self._local_apply = jax.jit(self._local_apply_impl, donate_argnums=(0, 1, 2, 4))
        self._apply_push = jax.jit(self._apply_push_impl, donate_argnums=(0, 1, 2))
        # The last call's pushes (key: first gradient id -> index, heads, workers), their payloads, the
        # flag after each, the flag before them, and those whose first row is still to come: reused
        # by each of their rows.
        self._cache: tuple[dict, Any, Any, Any, set] | None = None
        self._stepped: dict[int, int] = {}  # EASGD: per worker, the push whose local steps its model holds

    def reset(self, params: jax.Array) -> None:
        """Every worker's model back to ``params`` (the engine restarts from update 0)."""
        self.models = jnp.broadcast_to(params, (self.M, *params.shape)) if self.elastic else None
        self._cache = None
        self._stepped = {}

    # ---- jitted pieces -----------------------------------------------------------------------

    def _local_impl(self, payloads: jax.Array, at: jax.Array, history: jax.Array, models: jax.Array | None,
                    read_slots: jax.Array, workers: jax.Array, ks: jax.Array, ok: jax.Array) -> tuple:
        """The local steps of a block of pushes: from the versions they read (history slots
        ``read_slots[push, shard]``) or, EASGD, from the worker's own model; ``ks.shape[1]`` plain
        SGD steps each (vmapped over pushes). Returns (payloads, oks, ok): ``payloads`` (donated:
        updated in place) with what each push gives the server (`push_payload`) written from row
        ``at`` on; per push, whether every local loss up to its own is finite and at most
        ``run.max_loss`` (``ok`` on entry: the pushes before the block), padded with False to the
        buffer's rows (one shape for the calls that take them); and the last push's."""
        self.traces += 1
        steps = local_steps(self.layout, self.lr)
        origin = models[workers] if self.elastic else history[read_slots, jnp.arange(self.S)[None, :]]
        if origin.shape[0] == 1:  # one push: no batch axis
            final, losses = jax.tree.map(lambda a: a[None], steps(origin[0], workers[0], ks[0]))
        else:
            final, losses = jax.vmap(steps)(origin, workers, ks)
        fine = jnp.all(losses <= self.max_loss, axis=1)  # NaN compares false
        oks = ok & (jnp.cumsum(~fine) == 0)
        last = oks[-1]
        oks = jnp.pad(oks, (0, payloads.shape[0] - oks.shape[0]))
        # (A barrier: fused into the write below, the flattening of the final models ran element by element.)
        payload = jax.lax.optimization_barrier(push_payload(self.update, origin, final, self.lr))
        return jax.lax.dynamic_update_slice_in_dim(payloads, payload.astype(payloads.dtype), at, axis=0), oks, last

    def _exchange(self, center: jax.Array, models: jax.Array, worker: np.int32, shard: np.int32,
                  oks: jax.Array, push: np.int32) -> tuple[jax.Array, jax.Array]:
        """The elastic exchange of one shard (d = alpha (x_i - x_center); x_i -= d; x_center += d),
        guarded by ``oks[push]``: the new (center, models); ``models`` is donated (updated in place)."""
        new_center = self._exchange_center(center, models, worker, shard, oks, push)
        return new_center, self._exchange_model(models, center, worker, shard, oks, push)

    def _set_models_impl(self, models: jax.Array, workers: jax.Array, finals: jax.Array, oks: jax.Array) -> jax.Array:
        """EASGD: each worker's own model after its local steps (``finals[i]`` for ``workers[i]``,
        distinct; padding rows name worker M, dropped), unless a loss diverged (``oks[i]`` False)."""
        self.traces += 1
        keep = oks.reshape((-1,) + (1,) * (models.ndim - 1))
        return models.at[workers].set(jnp.where(keep, finals, models[workers]), mode="drop")

    def _exchange_center_impl(self, center: jax.Array, models: jax.Array, worker: jax.Array, shard: jax.Array,
                              oks: jax.Array, push: jax.Array) -> jax.Array:
        """The center's side of the elastic exchange of one shard: x_center + alpha (x_i - x_center)."""
        self.traces += 1
        new_center, _ = elastic_exchange(center[shard], models[worker, shard], self.alpha)
        return center.at[shard].set(jnp.where(oks[push], new_center, center[shard]))

    def _exchange_model_impl(self, models: jax.Array, center: jax.Array, worker: jax.Array, shard: jax.Array,
                             oks: jax.Array, push: jax.Array) -> jax.Array:
        """The worker's side, from the center before the exchange: x_i - alpha (x_i - x_center)."""
        self.traces += 1
        _, new_model = elastic_exchange(center[shard], models[worker, shard], self.alpha)
        return models.at[worker, shard].set(jnp.where(oks[push], new_model, models[worker, shard]))

    def _mix_impl(self, params: jax.Array, history: jax.Array, finals: jax.Array, push: jax.Array, weight: jax.Array,
                  shard: jax.Array, slot: jax.Array, oks: jax.Array) -> tuple[jax.Array, jax.Array]:
        """FedAsync's mix of one shard row, x <- (1 - a) x + a x_worker (``finals[push]``: the push's
        model), written to the new version's slot."""
        self.traces += 1
        new = jnp.where(oks[push], mix_rows(params[shard], finals[push, shard], weight), params[shard])
        return params.at[shard].set(new), history.at[slot, shard].set(new)

    def _local_mix_impl(self, params: jax.Array, history: jax.Array, payloads: jax.Array, read_slots: jax.Array,
                        workers: jax.Array, ks: jax.Array, ok: jax.Array, count: jax.Array, weights: jax.Array,
                        slots: jax.Array) -> tuple:
        """FedAsync on one shard: a wave's local steps (`_local_impl`), then its ``count`` rows'
        mixes in order (x <- (1 - a_j) x + a_j x_j, each written to its version's slot
        ``slots[j]``), in one call: the same numbers as `_mix_impl`, one call per row. Every
        version the wave reads exists at its start and no new version takes a slot one of them
        holds, so the reads come first. Returns (params, history, payloads, oks, ok) as
        `_local_impl` and `_mix_impl`."""
        payloads, oks, last = self._local_impl(payloads, jnp.int32(0), history, None, read_slots, workers, ks, ok)

        def mix(j: jax.Array, carry: tuple) -> tuple:
            # (A loop, not unrolled: XLA fused unrolled mixes into one expression and rounded
            # differently from one mix per call; a loop body computes each as `_mix_impl` does.)
            params, history = carry
            new = jnp.where(oks[j], mix_rows(params[0], payloads[j, 0], weights[j]), params[0])
            return new[None], history.at[slots[j], 0].set(new)

        params, history = jax.lax.fori_loop(0, count, mix, (params, history))
        return params, history, payloads, oks, last

    def _local_apply_impl(self, params: jax.Array, state: Any, payloads: jax.Array, at: jax.Array, history: jax.Array,
                          models: None, read_slots: jax.Array, workers: jax.Array, ks: jax.Array, ok: jax.Array,
                          row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Local SGD and FedBuff on one shard: the last block of an update's pushes (`_local_impl`)
        and the update (`_apply_push_impl`) in one call. Returns (params, state, history, payloads,
        oks, ok)."""
        payloads, oks, last = self._local_impl(payloads, at, history, models, read_slots, workers, ks, ok)
        params, state, history = self._apply_push_impl(params, state, history, payloads, last, row_ints, member_ints, weights)
        return params, state, history, payloads, oks, last

    def _apply_push_impl(self, params: jax.Array, state: Any, history: jax.Array, pseudo: jax.Array,
                         ok: jax.Array, row_ints: jax.Array, member_ints: jax.Array, weights: jax.Array) -> tuple:
        """Local SGD and FedBuff: the pushes' pseudo-gradients (`push_payload`, ``pseudo[push]``;
        rows past the update's pushes have weight 0) through the server's update of one row, with
        no gather and no scan (a scan's padding row cost as much as the row); the row is inactive
        (changes nothing) unless ``ok``."""
        self.traces += 1
        shard = row_ints[0]
        read = history[member_ints[:, 3], shard] if self.needs_read else None  # (DC-ASGD: the versions read)
        row_ints = row_ints.at[2].multiply(ok.astype(row_ints.dtype))
        return self.apply_row(params, state, history, pseudo[:, shard], row_ints, member_ints, weights, read)

    # ---- host side ---------------------------------------------------------------------------

    def _pushes(self, tr: TraceBuilder, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pushes an update combines, in (worker, iteration) order: (heads, workers, ks [pushes, H])."""
        workers_all = column(tr.worker, np.int32)[gids]
        ks_all = column(tr.k, np.int64)[gids]
        order, steps = push_heads(workers_all, ks_all, column(tr.local_step, np.int32)[gids])
        gids, workers_all, ks_all = gids[order], workers_all[order], ks_all[order]
        heads = gids[::steps]
        return heads, workers_all[::steps], ks_all.reshape(len(heads), steps)

    def _wave(self, tr: TraceBuilder, r: int, end: int,
              planner: WavePlanner) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """The pushes whose local steps one call takes from row r on: (key, heads, workers, ks) of
        each. Several only for one-push updates on one shard (FedAsync, EASGD), as the asynchronous
        engine's waves: the rows after r whose push reads only versions that exist before row r
        (FedAsync) or whose worker's model no row of the wave exchanges first (EASGD), up to
        ``wave``; their steps do not depend on each other's results."""
        offsets, gid = column(tr.u_offsets, np.int64), column(tr.u_gid, np.int64)
        read = column(tr.read_version, np.int64)
        wave: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for row in range(r, min(end, r + self.wave)):
            gids = gid[offsets[row]:offsets[row + 1]]
            heads, workers, ks = self._pushes(tr, gids)
            if wave and (int(read[heads[0]]) > planner.versions[0] if not self.elastic
                         else any(int(workers[0]) == int(w[0]) for _, _, w, _ in wave)):
                break
            wave.append((int(gids.min()), heads, workers, ks))
        return wave

    def run_rows(self, tr: TraceBuilder, start: int, end: int, planner: WavePlanner, params: jax.Array, state: Any,
                 history: jax.Array) -> LocalOutcome:
        """Apply update rows [start, end) of ``tr``; the planner's cursor and versions follow.

        If a local loss diverged, the rows from the first push that saw it on changed nothing on
        the device, and the outcome (``ok`` False, the planner's cursor, versions and counts) ends
        before that row, as if the rows had been applied one by one up to it."""
        out = LocalOutcome(params, state, history, True, 0, 0.0, 0)
        offsets = column(tr.u_offsets, np.int64)[start:end + 1]
        ok = jnp.ones((), bool)
        # Per push, from its row: (row, the flag before it (an array and an index), what the host had before it).
        checks: list[tuple[int, tuple[jax.Array, int | None], tuple]] = []
        for r in range(start, end):
            lo, hi = offsets[r - start], offsets[r - start + 1]
            gids = column(tr.u_gid, np.int64)[lo:hi]
            shard = int(column(tr.u_shard, np.int32)[r])
            key = int(gids.min())
            if self._cache is None or key not in self._cache[0]:
                wave = self._wave(tr, r, end, planner)
                heads, workers, ks = wave[0][1], np.concatenate([w for _, _, w, _ in wave]), np.concatenate([k for *_, k in wave])
                if self.elastic and self._stepped.get(int(workers[0])) == key:
                    # Its rows interleave with another push's (shards updated in parallel): the
                    # worker's model took these local steps already, and its rows not exchanged
                    # yet still hold their result (taking them again would step twice).
                    self._cache = ({key: (0, heads, workers[:1])}, None, jnp.reshape(ok, (1,)), None, set())
                else:
                    reads = column(tr.read_version, np.int64).reshape(-1, self.S)[np.concatenate([h for _, h, _, _ in wave])]
                    read_slots = planner.slots.lookup(reads) if not self.elastic else np.zeros_like(reads, np.int32)
                    # One buffer of payloads (the blocks write into it in place), reused from update
                    # to update: a fresh [pushes, S, chunk] array per call, and their concatenation,
                    # cost more than the combination (~90 ms of 64 pushes, mostly page faults).
                    payloads = self._cache[1] if self._cache is not None and self._cache[1] is not None else None
                    if payloads is None:
                        payloads = jnp.zeros((self.buffer_rows, self.S, self.layout.chunk), jnp.float32)
                    before, n = ok, len(workers)
                    if self.single and n < self.wave:  # padded with copies of the first push (results unused)
                        workers, ks, read_slots = (np.concatenate([a, np.repeat(a[:1], self.wave - n, axis=0)])
                                                   for a in (workers, ks, read_slots))
                    if self.single and self.update == "mix":  # the wave's mixes in the same call
                        grow, slots, weights = self._wave_mixes(tr, r, n, np.array([h[0] for _, h, _, _ in wave]), planner)
                        if grow:
                            out.history = jnp.pad(out.history, ((0, grow), (0, 0), (0, 0)))
                        out.params, out.history, payloads, oks, ok = self._local_mix(
                            out.params, out.history, payloads, read_slots, workers.astype(np.int32), ks.astype(np.int32), ok,
                            np.int32(n), weights, slots)
                    else:
                        size = self.wave if self.single else self.push_block
                        for b in range(0, len(workers), size):  # (blocks of pushes: see PUSH_BLOCK_CPU)
                            block = slice(b, b + size)
                            args = (payloads, np.int32(b), out.history, self.models, read_slots[block],
                                    workers[block].astype(np.int32), ks[block].astype(np.int32), ok)
                            if self.fuse_apply and b + size >= len(workers):  # the last block, and the update
                                inputs = self._update_inputs(tr, r, lo, hi, heads, planner, out)
                                out.params, out.state, out.history, payloads, oks, ok = self._local_apply(
                                    out.params, out.state, *args, *inputs)
                            else:
                                payloads, oks, ok = self._local(*args)
                    pushes = {k: (j, h, w) for j, (k, h, w, _) in enumerate(wave)}
                    self._cache = (pushes, payloads, oks, before, set(pushes))
                    if self.elastic:  # the workers' models after their local steps, before their exchanges
                        padded = np.full(self.buffer_rows, self.M, np.int32)
                        padded[:n] = workers[:n]
                        self.models = self._set_models(self.models, padded, payloads, oks)
                        self._stepped.update({int(w[0]): k for k, (_, _, w) in pushes.items()})
            pushes, payloads, oks, before, fresh = self._cache
            push, heads, workers = pushes[key]
            if key in fresh:  # its push's first row: count its local steps, and check them at the end
                fresh.discard(key)
                flag = (before, None) if push == 0 else (oks, push - 1)
                checks.append((r, flag, (planner.versions.copy(), out.computed + len(gids), out.stale_sum, out.stale_count)))
                out.computed += len(gids)
            if self.elastic:
                out.params, self.models = self._exchange(out.params, self.models, np.int32(workers[0]), np.int32(shard),
                                                         oks, np.int32(push))
            elif self.update == "mix" and not self.single:
                grow, slot = self._new_version_slot(tr, r, planner)
                if grow:
                    out.history = jnp.pad(out.history, ((0, grow), (0, 0), (0, 0)))
                version = int(column(tr.u_version, np.int64)[r])
                stale = version - 1 - int(column(tr.read_version, np.int64).reshape(-1, self.S)[heads[0], shard])
                weight = np.float32(mixing_weight(self.scenario.algorithm, stale))
                out.params, out.history = self._mix(out.params, out.history, payloads, np.int32(push), weight, np.int32(shard),
                                                    np.int32(slot), oks)
            elif self.update != "mix" and not self.fuse_apply:
                inputs = self._update_inputs(tr, r, lo, hi, heads, planner, out)
                out.params, out.state, out.history = self._apply_push(out.params, out.state, out.history, payloads, ok,
                                                                      *inputs)
            planner.versions[shard] += 1
            stale = column(tr.staleness, np.int64)[gids]
            out.stale_sum += float(stale.sum())
            out.stale_count += len(gids)
            planner.row = r + 1
        if checks:
            self._check(checks, ok, planner, out)
        return out

    def _check(self, checks: list[tuple[int, tuple[jax.Array, int | None], tuple]], ok: jax.Array, planner: WavePlanner,
               out: LocalOutcome) -> None:
        """Whether a local loss diverged (one wait per `run_rows` call; no op to compile): if so,
        the outcome and the planner end before the row of the first push that saw it."""
        arrays = list({id(a): a for (_, (a, _), _) in checks}.values()) + [ok]
        fetched = dict(zip((id(a) for a in arrays), jax.device_get(arrays)))
        flags = np.array([bool(fetched[id(a)] if i is None else fetched[id(a)][i]) for (_, (a, i), _) in checks]
                         + [bool(fetched[id(ok)])])
        if not flags.all():
            # checks[i] holds the flag before push i; the first push after which it is False diverged.
            bad = int(np.argmin(flags[1:]))
            r, _, (versions, computed, stale_sum, stale_count) = checks[bad]
            planner.row, planner.versions = r, versions  # rows before r were applied; this one and the rest never will be
            out.computed, out.stale_sum, out.stale_count = computed, stale_sum, stale_count
            out.ok = False

    def _update_inputs(self, tr: TraceBuilder, r: int, lo: int, hi: int, heads: np.ndarray, planner: WavePlanner,
                       out: LocalOutcome) -> tuple[np.ndarray, ...]:
        """`_row_inputs` of update row r (members ``[lo, hi)`` of the trace), the history grown first if needed."""
        member_weight = dict(zip(column(tr.u_gid, np.int64)[lo:hi].tolist(), column(tr.u_weight, np.float64)[lo:hi].tolist()))
        grow, inputs = self._row_inputs(tr, r, heads, np.array([member_weight[g] for g in heads.tolist()]), planner)
        if grow:
            out.history = jnp.pad(out.history, ((0, grow), (0, 0), (0, 0)))
        return inputs

    def _wave_mixes(self, tr: TraceBuilder, r: int, n: int, heads: np.ndarray,
                    planner: WavePlanner) -> tuple[int, np.ndarray, np.ndarray]:
        """FedAsync on one shard: the history growth needed, the slots of the versions rows [r, r + n)
        write and their mixing weights (`mixing_weight` of the staleness of each push, ``heads``:
        its first gradient row), padded to the wave with the scratch row and weight 0."""
        grow = planner.make_room(tr, n)
        versions = column(tr.u_version, np.int64)[r:r + n]
        slots = np.full(self.wave, planner.scratch, np.int32)
        slots[:n] = planner.slots.store(0, versions)
        reads = column(tr.read_version, np.int64)[heads]
        weights = np.zeros(self.wave, np.float32)
        weights[:n] = [mixing_weight(self.scenario.algorithm, int(stale)) for stale in versions - 1 - reads]
        return grow, slots, weights

    def _new_version_slot(self, tr: TraceBuilder, r: int, planner: WavePlanner) -> tuple[int, int]:
        """The history growth needed, and the slot of the version update row r writes."""
        shard, version = int(column(tr.u_shard, np.int32)[r]), int(column(tr.u_version, np.int64)[r])
        grow = planner.make_room(tr, 1)
        return grow, int(planner.slots.store(shard, np.array([version]))[0])

    def _row_inputs(self, tr: TraceBuilder, r: int, heads: np.ndarray, weights: np.ndarray,
                    planner: WavePlanner) -> tuple[int, tuple[np.ndarray, ...]]:
        """The history growth needed, and the row update's inputs for update row r, one
        pseudo-gradient per push (``heads``: its first gradient row; ``weights``: its weight)."""
        shard, version = int(column(tr.u_shard, np.int32)[r]), int(column(tr.u_version, np.int64)[r])
        grow, slot = self._new_version_slot(tr, r, planner)
        reads = column(tr.read_version, np.int64).reshape(-1, self.S)[heads, shard]
        row_ints = np.array([shard, slot, 1], np.int32)
        member_ints = np.zeros((self.members_max, 4), np.int32)
        member_ints[:len(heads)] = np.stack([np.arange(len(heads)), version - 1 - reads, column(tr.worker, np.int32)[heads],
                                                planner.slots.lookup(reads, np.full(len(heads), shard))], axis=1)
        table = np.zeros(self.members_max, np.float32)
        table[:len(heads)] = weights
        return grow, (row_ints, member_ints, table)


def _pad(grads: jax.Array, rows: int) -> jax.Array:
    if grads.shape[0] >= rows:
        return grads
    return jnp.concatenate([grads, jnp.zeros((rows - grads.shape[0], *grads.shape[1:]), grads.dtype)])
