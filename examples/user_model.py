"""A user model for asgd-sim: linear regression in plain JAX, with its own data.

Use it from a scenario (run from the repository root, or put this directory on PYTHONPATH):

    [model]
    name = "examples.user_model:make_model"
    options = { features = 5 }

    [data]
    factory = "examples.user_model:make_data"

`make_model(**model.options)` returns (init, loss, accuracy): pure functions of a parameter
pytree and a batch {"x": [B, features], "y": [B]} (rows the simulator samples from each
worker's shard). The third function is optional; its value is reported as `test_accuracy`
(here the coefficient of determination R^2 on the test split). `make_data(seed=...)` returns
(train, test) dicts of numpy arrays with keys "x" and "y".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_model(features: int = 5, l2: float = 0.0):
    """Linear regression y ~ x.w + b with mean squared error (plus l2 * |w|^2 / 2)."""

    def init(key):
        return {"w": 0.01 * jax.random.normal(key, (features,)), "b": jnp.zeros(())}

    def predict(params, x):
        return x @ params["w"] + params["b"]

    def loss(params, batch):
        error = predict(params, batch["x"]) - batch["y"]
        return 0.5 * jnp.mean(error**2) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    def accuracy(params, batch):
        residual = jnp.sum((predict(params, batch["x"]) - batch["y"]) ** 2)
        return 1.0 - residual / jnp.sum((batch["y"] - jnp.mean(batch["y"])) ** 2)

    return init, loss, accuracy


def make_data(seed: int = 0, samples: int = 600, features: int = 5, noise: float = 0.1):
    """y = x.w_true + 0.5 + noise; 500 rows to train on, the rest to test."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype(np.float32)
    y = (x @ rng.normal(size=features) + 0.5 + noise * rng.normal(size=samples)).astype(np.float32)
    return {"x": x[:500], "y": y[:500]}, {"x": x[500:], "y": y[500:]}


if __name__ == "__main__":  # a tiny stand-alone check: plain SGD on one worker's stream of batches
    from asgd_sim.scenario.config import DataConfig, ModelConfig, Scenario
    from asgd_sim.numerics.problems import build_problem

    scenario = Scenario(
        model=ModelConfig(name="examples.user_model:make_model", options={"features": 5}),
        data=DataConfig(factory="examples.user_model:make_data", batch_size=16),
    )
    problem = build_problem(scenario, num_workers=2)
    params = problem.init(jax.random.PRNGKey(0))
    step = jax.jit(lambda p, k: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(problem.loss)(p, problem.make_batch(0, k))))
    for k in range(200):
        params = step(params, k)
    print({name: float(value) for name, value in problem.evaluate(params).items()})
