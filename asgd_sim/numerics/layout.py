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

    def flat(self, rows: Sequence[Any]) -> np.ndarray:
        """The P parameters of shard rows, as one numpy vector."""
        return np.concatenate([np.asarray(r) for r in rows])[: self.P]

    def pytree(self, rows: Sequence[Any]) -> Any:
        return self.unravel(jnp.asarray(self.flat(rows)))

    def flat_loss(self, shard_rows: jax.Array, worker: jax.Array, k: jax.Array) -> jax.Array:
        """The loss of gradient (worker, k)'s mini-batch at parameters given as shard rows [S, chunk]."""
        params = self.unravel(shard_rows.reshape(-1)[: self.P])
        return self.problem.loss(params, self.problem.make_batch(worker, k))

    def grad_fn(self) -> Callable[[tuple, Any, Any], tuple]:
        """jit: (shard rows, worker, k) -> per-shard gradient rows of the (worker, k) mini-batch."""
        S, chunk = self.S, self.chunk

        def grads(rows: tuple, worker: jax.Array, k: jax.Array) -> tuple:
            g = jax.grad(self.flat_loss)(jnp.stack(rows), worker, k).reshape(S, chunk)
            return tuple(g[s] for s in range(S))

        return jax.jit(grads)
