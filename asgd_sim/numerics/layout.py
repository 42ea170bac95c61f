"""The parameter layout shared by the numerics engine and the real parameter server.

Parameters are one flat float32 vector split into S equal shard rows of ``chunk`` values (the last
padded with zeros that no loss touches), so a shard update is a row update and the simulator and a
real server hold the same numbers in the same places: a replay of a real trace reproduces the
real parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..errors import ScenarioError

__all__ = ["Layout"]


class Layout:
    """The problem's initial parameters (seeded) as S shard rows; conversions back to pytrees."""

    def __init__(self, problem: Any, shards: int, seed: int) -> None:
        flat, self.unravel = ravel_pytree(problem.init(jax.random.PRNGKey(seed)))
        self.problem = problem
        self.S = shards
        self.P = int(flat.size)
        self.chunk = -(-self.P // shards)
        # Host-side padding and one transfer: eager device ops would each compile a tiny program.
        padded = np.zeros(shards * self.chunk, np.float32)
        padded[: self.P] = np.asarray(flat, np.float32)
        self.initial = padded.reshape(shards, self.chunk)
        # Where a stateful model's state sits in the shard rows (numerics.user_problem): those
        # values are moved by the state changes of an update's gradients, not by the optimizer.
        self.state_mask: np.ndarray | None = None
        if getattr(problem, "stateful", False):
            tree = self.unravel(jnp.zeros(self.P, jnp.float32))
            marks = ravel_pytree({"params": jax.tree.map(jnp.zeros_like, tree["params"]),
                                  "state": jax.tree.map(jnp.ones_like, tree["state"])})[0]
            mask = np.zeros(shards * self.chunk, bool)
            mask[: self.P] = np.asarray(marks) > 0
            self.state_mask = mask.reshape(shards, self.chunk)

    def flat(self, rows: Sequence[Any]) -> np.ndarray:
        """The P parameters of shard rows, as one numpy vector."""
        return np.concatenate([np.asarray(r) for r in rows])[: self.P]

    def pytree(self, rows: Sequence[Any]) -> Any:
        return self.unravel(jnp.asarray(self.flat(rows)))

    def flat_loss(self, shard_rows: jax.Array, worker: jax.Array, k: jax.Array) -> jax.Array:
        """The loss of gradient (worker, k)'s mini-batch at parameters given as shard rows [S, chunk]."""
        params = self.unravel(shard_rows.reshape(-1)[: self.P])
        return self.problem.loss(params, self.problem.make_batch(worker, k))

    def value_and_grad(self, shard_rows: jax.Array, worker: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(loss, gradient rows [S, chunk]) of gradient (worker, k) at ``shard_rows``; for a stateful
        model the state's rows hold the change its forward pass made (`user_problem`)."""
        if self.state_mask is None:
            return jax.value_and_grad(self.flat_loss)(shard_rows, worker, k)
        tree = self.unravel(shard_rows.reshape(-1)[: self.P])
        value, grads = self.problem.train_step(tree, self.problem.make_batch(worker, k))
        flat = ravel_pytree(grads)[0].astype(jnp.float32)
        return value, jnp.pad(flat, (0, self.S * self.chunk - self.P)).reshape(shard_rows.shape)

    def grad_fn(self) -> Callable[[tuple, Any, Any], tuple]:
        """jit: (shard rows, worker, k) -> per-shard gradient rows of the (worker, k) mini-batch."""
        if self.state_mask is not None:
            raise ScenarioError("model.name", f"{self.problem.name}: a model with mutable state (its loss takes state) runs in "
                                "the simulator only; real backends need a loss without state")
        S, chunk = self.S, self.chunk

        def grads(rows: tuple, worker: jax.Array, k: jax.Array) -> tuple:
            g = jax.grad(self.flat_loss)(jnp.stack(rows), worker, k).reshape(S, chunk)
            return tuple(g[s] for s in range(S))

        return jax.jit(grads)
