"""The arithmetic of one real shard update, for every kind of model update a policy names.

`backends.server.RealServer` decides *which* pushes an update combines (the policy's `Apply`) and
when it may run; this module says *what* one shard's update computes from them, exactly as the
numerics engine does in a simulation or a replay (`asgd_sim.numerics.local` for the kinds whose
workers take local steps), so a replay of a real trace reproduces the real parameters:

- "gradient": every gradient of the update, with its weight, staleness and worker, through the
  server rule (`numerics.rules`), padded to the policy's width.
- "local_average" (local SGD) and "delta" (FedBuff): one pseudo-gradient per push (what the worker
  shipped with the push's first gradient row, its *head*; heads in (worker, k) order), weighted
  as its head, through the same rule.
- "mix" (FedAsync): row <- (1 - a) row + a x_worker with a = `numerics.local.mixing_weight` of the
  head's staleness on this shard.
- "elastic" (EASGD): d = alpha (x_i - center); center + d, and x_i - d becomes the worker's own
  model on this shard (the server keeps it: the worker's next read returns it).

`pick` (server side, under its state lock) turns an update's members into a `ShardInputs`;
`ShardMath` (store side: this process or a shard actor) computes the new row from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..numerics.local import elastic_exchange, mix_rows, mixing_weight, push_heads
from ..scenario.config import AlgorithmConfig

__all__ = ["RULE_UPDATES", "ShardInputs", "ShardMath", "pick"]

# The kinds of model update that go through the server rule (and so DC-ASGD's read rows).
RULE_UPDATES = ("gradient", "local_average", "delta")


@dataclass(frozen=True)
class ShardInputs:
    """What one shard's update combines: per pushed payload (a gradient, or a push's head), what
    the worker shipped for this shard, the read row (DC-ASGD, else None), weight, staleness, worker."""

    grads: list[Any]
    reads: list[Any] | None
    weights: list[float]
    staleness: list[int]
    workers: list[int]


def pick(update: str, trace: Any, shard: int, before: int, members: list[int], weights: list[float],
         shipped: dict[int, tuple], reads: dict[int, tuple] | None) -> ShardInputs:
    """The inputs of shard ``shard``'s update at version ``before`` that combines gradient rows
    ``members`` (weights ``weights``); ``shipped`` / ``reads`` hold, per gid, what its worker
    shipped and read (for local steps: under the push's head only). Call under the trace's lock."""
    S = trace.shards
    if update != "gradient":
        rows = np.asarray(members, np.int64)
        order, steps = push_heads(np.asarray([trace.worker[g] for g in members]), np.asarray([trace.k[g] for g in members]),
                                  np.asarray([trace.local_step[g] for g in members]))
        weight_of = dict(zip(members, weights))
        members = rows[order][::steps].tolist()
        weights = [weight_of[g] for g in members]
    return ShardInputs(grads=[shipped[g][shard] for g in members],
                       reads=[reads[g][shard] for g in members] if reads is not None else None,
                       weights=list(weights), staleness=[before - trace.read_version[g * S + shard] for g in members],
                       workers=[int(trace.worker[g]) for g in members])


class ShardMath:
    """One update of one shard row, by ``update`` (see the module docstring). Rule updates pad
    their gradients to the numerics engine's width G (weight-0 rows, so one compiled call serves
    every update), then run `ServerRule.apply`; mixes and exchanges use `numerics.local`'s formulas.
    `apply` returns (row, state, model): ``model`` is EASGD's new x_i on this shard, else None."""

    def __init__(self, rule: Any, width: int, update: str = "gradient", algorithm: AlgorithmConfig | None = None) -> None:
        self.rule, self.G, self.update = rule, width, update
        self.algorithm = algorithm if algorithm is not None else AlgorithmConfig()
        self.needs_read = bool(rule.needs_read_params) and update in RULE_UPDATES
        self._init = jax.jit(rule.init)
        self._apply = jax.jit(self._apply_impl)
        alpha = float(self.algorithm.elastic_alpha)
        self._mix = jax.jit(mix_rows)
        self._exchange = jax.jit(lambda center, model: elastic_exchange(center, model, alpha))
        self._zeros: Any = None

    def _apply_impl(self, row: jax.Array, state: Any, grads: tuple, weights: jax.Array, staleness: jax.Array,
                    workers: jax.Array, reads: tuple | None) -> tuple:
        read = jnp.stack(reads) if reads is not None else None
        return self.rule.apply(row, state, jnp.stack(grads), weights=weights, staleness=staleness, workers=workers,
                               read_params=read)

    def init(self, row: jax.Array) -> Any:
        return self._init(row)

    def apply(self, row: jax.Array, state: Any, grads: Sequence[Any], reads: Sequence[Any] | None,
              weights: Sequence[float], staleness: Sequence[int], workers: Sequence[int]) -> tuple[Any, Any, Any]:
        """The new (row, state, model), computed (blocks until ready: the caller times the update)."""
        if self.update == "mix":  # (one push per update: the first is the one the numerics mix)
            weight = np.float32(mixing_weight(self.algorithm, int(staleness[0])))
            return jax.block_until_ready(self._mix(row, jnp.asarray(grads[0]), weight)), state, None
        if self.update == "elastic":
            center, model = jax.block_until_ready(self._exchange(row, jnp.asarray(grads[0])))
            return center, state, model
        pad = self.G - len(grads)
        if pad < 0:
            raise RuntimeError(f"an update of {len(grads)} gradients exceeds the width {self.G}")
        if self._zeros is None:
            self._zeros = jnp.zeros_like(row)
        zeros = (self._zeros,) * pad
        new, state = self._apply(row, state, tuple(grads) + zeros, np.asarray(list(weights) + [0.0] * pad, np.float32),
                                 np.asarray(list(staleness) + [0] * pad, np.int32),
                                 np.asarray(list(workers) + [0] * pad, np.int32),
                                 tuple(reads) + zeros if reads is not None else None)
        return (*jax.block_until_ready((new, state)), None)

    def warm_up(self, row: jax.Array, state: Any) -> None:
        """Compile the update (an all-padding one, or a mix / exchange, whose result is thrown away)."""
        if self.update in ("mix", "elastic"):
            self.apply(row, state, [row], None, [1.0], [0], [0])
        else:
            self.apply(row, state, [], [] if self.needs_read else None, [], [], [])
