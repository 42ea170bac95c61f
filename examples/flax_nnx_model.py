"""A Flax NNX model with dropout and batch norm, trained by asgd-sim from Python.

    .venv/bin/python examples/flax_nnx_model.py        (from the repository root; pip install flax)

`FlaxMLP` is a problem object for ``asgd_sim.simulate(..., problem=...)``: ``init(key)`` returns
``(params, state)`` (NNX's ``nnx.Param`` and ``nnx.BatchStat`` variables as plain pytrees), and
``loss(params, batch, *, key, state)`` returns ``(loss, new_state)``. asgd-sim hands the loss a PRNG
key per gradient (a pure function of the run seed, the worker and its iteration: dropout is exact
and the run deterministic) and ``key=None`` at evaluation, where the model runs in inference mode
(no dropout, batch norm from its moving averages). The batch-norm statistics live with the
parameters on the simulated server and are read stale like them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, features: int, hidden: int, classes: int, dropout: float, rngs: nnx.Rngs) -> None:
        self.dense1 = nnx.Linear(features, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)
        self.dense2 = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = nnx.relu(self.norm(self.dense1(x)))
        return self.dense2(self.dropout(x, rngs=rngs))


class FlaxMLP:
    """An MLP 64 -> hidden -> 10 with batch norm and dropout, on 8x8 digits (or any {"x", "y"} data)."""

    name = "flax_mlp"

    def __init__(self, features: int = 64, hidden: int = 64, classes: int = 10, dropout: float = 0.1) -> None:
        self.sizes = (features, hidden, classes, dropout)
        model = MLP(*self.sizes, rngs=nnx.Rngs(0))
        self.graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)

    def init(self, key: jax.Array):
        model = MLP(*self.sizes, rngs=nnx.Rngs(params=key))
        _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(stats)

    def _model(self, params, state, training: bool) -> MLP:
        """The module with these values (a fresh abstract copy each call: NNX modules are mutable)."""
        abstract = nnx.eval_shape(lambda: MLP(*self.sizes, rngs=nnx.Rngs(0)))
        _, param_state, stat_state = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        nnx.replace_by_pure_dict(param_state, params)
        nnx.replace_by_pure_dict(stat_state, state)
        model = nnx.merge(self.graphdef, param_state, stat_state)
        model.train() if training else model.eval()
        return model

    def loss(self, params, batch, *, key, state):
        model = self._model(params, state, training=key is not None)
        logits = model(batch["x"], rngs=nnx.Rngs(dropout=key) if key is not None else None)
        value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        new_state = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        return value, new_state

    def accuracy(self, params, batch, *, state):
        logits = self._model(params, state, training=False)(batch["x"])
        return jnp.mean(jnp.argmax(logits, -1) == batch["y"])


if __name__ == "__main__":
    import asgd_sim

    result = asgd_sim.simulate("scenarios/quickstart.toml", ["run.until_updates=600", "run.eval_every=200"], problem=FlaxMLP())
    print(result.metrics_frame[["update", "sim_time", "train_loss", "test_accuracy"]].to_string(index=False))
