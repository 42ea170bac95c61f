"""An Equinox model with dropout, trained by asgd-sim from Python.

    .venv/bin/python examples/equinox_model.py        (from the repository root; pip install equinox)

`EquinoxMLP` is a problem object for ``asgd_sim.simulate(..., problem=...)``. An Equinox module
holds its activation functions beside its arrays, and the server updates arrays only: ``init``
returns the arrays (``eqx.partition(model, eqx.is_inexact_array)``) and ``loss`` rebuilds the
module with ``eqx.combine``. ``loss(params, batch, *, key)`` takes a PRNG key per gradient for
dropout (a pure function of the run seed, the worker and its iteration, so the run is exact and
deterministic with its seed) and ``key=None`` at evaluation, where dropout is off.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax


class DropoutMLP(eqx.Module):
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, features: int, width: int, classes: int, rate: float, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(features, width, key=k1)
        self.out = eqx.nn.Linear(width, classes, key=k2)
        self.dropout = eqx.nn.Dropout(rate)

    def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        h = jax.nn.relu(self.hidden(x))
        h = self.dropout(h, key=key, inference=key is None)
        return self.out(h)


class EquinoxMLP:
    """An MLP features -> width -> classes with dropout, on 8x8 digits (or any {"x", "y"} data)."""

    name = "equinox_mlp"

    def __init__(self, features: int = 64, width: int = 64, classes: int = 10, rate: float = 0.2) -> None:
        self.sizes = (features, width, classes, rate)
        # The static part (functions, the dropout rate) is the same for every key: split it once.
        _, self.static = eqx.partition(DropoutMLP(*self.sizes, key=jax.random.PRNGKey(0)), eqx.is_inexact_array)

    def init(self, key: jax.Array):
        params, _ = eqx.partition(DropoutMLP(*self.sizes, key=key), eqx.is_inexact_array)
        return params

    def _logits(self, params, x: jax.Array, key: jax.Array | None) -> jax.Array:
        model = eqx.combine(params, self.static)
        keys = None if key is None else jax.random.split(key, x.shape[0])  # one dropout mask per example
        return jax.vmap(model)(x, keys) if keys is not None else jax.vmap(lambda row: model(row, None))(x)

    def loss(self, params, batch, *, key):
        logits = self._logits(params, batch["x"], key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    def accuracy(self, params, batch):
        return jnp.mean(jnp.argmax(self._logits(params, batch["x"], None), -1) == batch["y"])


if __name__ == "__main__":
    import asgd_sim

    result = asgd_sim.simulate("scenarios/quickstart.toml", ["run.until_updates=600", "run.eval_every=200"], problem=EquinoxMLP())
    print(result.metrics_frame[["update", "sim_time", "train_loss", "test_accuracy"]].to_string(index=False))
