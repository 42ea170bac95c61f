"""The machinery every learning problem shares: the `Problem` bundle, mini-batches drawn from
per-worker shards, and evaluations.

A `Problem` is a bundle of pure JAX functions the numerics engine composes: `init(key)` gives the
starting parameters, `loss(params, batch)` the mini-batch objective, `make_batch(worker, k)` the
mini-batch of gradient (worker, k) and `evaluate(params)` the metrics of one evaluation (every
name in `asgd_sim.scenario.config.METRICS`: train loss, test accuracy, the squared norm of the
objective's gradient, and f(x) - f* where the optimum is known; NaN where a problem cannot say).
The mini-batch is a pure function of (run seed, worker, k) built on the device from
device-resident data:

    key = fold_in(fold_in(PRNGKey(seed), worker), k)
    rows = shards[worker, randint(key, (batch_size,), 0, shard_size[worker])]

so it is jittable and `vmap`-able over int32 arrays of workers and iterations (the engine builds
all ready mini-batches in one call), a replay sees the batches the original run saw, and two
scenarios with the same data config and worker count see the same batches (common random
numbers). Sampling is with replacement, uniform within the worker's shard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ScenarioError
from ..scenario.config import METRICS, DataConfig
from .data import Dataset, data_rng, eval_subset, partition_indices

__all__ = ["Problem", "Params", "Batch", "NAN", "HIGHEST", "batch_key", "sampled_problem", "make_problem", "metrics",
           "squared_norm", "device_array", "dataset_problem"]

Params = Any
Batch = Any
HIGHEST = jax.lax.Precision.HIGHEST  # exact float32 products for the theory problems (no TF32)
NAN = float("nan")


@dataclass(frozen=True)
class Problem:
    """A learning problem as pure functions (see the module docstring)."""

    name: str
    init: Callable[[jax.Array], Params]
    loss: Callable[[Params, Batch], jax.Array]
    make_batch: Callable[[jax.Array, jax.Array], Batch]
    evaluate: Callable[[Params], dict[str, jax.Array]]
    param_count: int
    param_bytes: int  # float32 bytes of one copy of the parameters
    optimum: Params | None = None  # the exact minimiser, where known (quadratic, least_squares)
    # A model with mutable state (numerics.user_problem): (tree, batch) -> (loss, gradient tree),
    # whose "state" part is the change the forward pass made to the state. None: a plain loss.
    train_step: Callable[[Params, Batch], tuple[jax.Array, Params]] | None = None

    @property
    def stateful(self) -> bool:
        return self.train_step is not None



def batch_key(seed: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    root = jax.random.PRNGKey(seed)
    return lambda worker, k: jax.random.fold_in(jax.random.fold_in(root, worker), k)


def sampled_problem(
    name: str, init: Callable, loss: Callable, evaluate: Callable, gather: Callable[[jax.Array], Batch],
    labels: np.ndarray | None, n: int, data: DataConfig, seed: int, num_workers: int, optimum: Params = None,
) -> Problem:
    """A problem whose batch is `gather(example indices)` drawn from the worker's shard."""
    if data.partition in ("dirichlet", "classes") and labels is None:
        raise ScenarioError("data.partition", f"{data.partition!r} deals out class labels, and {name}'s data has none: use 'iid'")
    shared = data.partition == "shared"  # every worker samples the whole training set (identical data)
    parts = [np.arange(n)] if shared else partition_indices(
        labels if labels is not None else np.zeros(n, np.int32),
        num_workers, data.partition, data.alpha, data_rng(seed, "partition"), classes_per_worker=data.classes_per_worker,
    )
    sizes = np.array([len(p) for p in parts], np.int32)
    table = np.zeros((len(parts), sizes.max()), np.int32)  # padded: row w holds worker w's examples
    for worker, part in enumerate(parts):
        table[worker, : len(part)] = part
    shards, shard_sizes = jnp.asarray(table), jnp.asarray(sizes)
    key_of, batch_size = batch_key(seed), data.batch_size

    def make_batch(worker: jax.Array, k: jax.Array) -> Batch:
        row = 0 if shared else worker
        slots = jax.random.randint(key_of(worker, k), (batch_size,), 0, shard_sizes[row])
        return gather(shards[row, slots])

    return make_problem(name, init, loss, make_batch, evaluate, optimum)


def make_problem(name: str, init: Callable, loss: Callable, make_batch: Callable, evaluate: Callable, optimum: Params) -> Problem:
    init = jax.jit(init)  # one compiled call instead of an eager dispatch per layer
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    return Problem(name, init, loss, make_batch, evaluate, count, 4 * count, optimum)


def metrics(train_loss: jax.Array, test_accuracy: jax.Array | float = NAN, grad_norm_sq: jax.Array | float = NAN,
            suboptimality: jax.Array | float = NAN) -> dict[str, jax.Array]:
    """An evaluation: every key of `asgd_sim.scenario.config.METRICS`, float32 (NaN: not known)."""
    values = {"train_loss": train_loss, "test_accuracy": test_accuracy, "grad_norm_sq": grad_norm_sq, "suboptimality": suboptimality}
    return {name: jnp.asarray(values[name], jnp.float32) for name in METRICS}


def squared_norm(tree: Params) -> jax.Array:
    """The squared Euclidean norm of a pytree of arrays (a gradient)."""
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def device_array(array: np.ndarray) -> jax.Array:
    """float -> float32, integer -> int32 (JAX's defaults without x64), on the device."""
    if np.issubdtype(array.dtype, np.floating):
        return jnp.asarray(array, jnp.float32)
    if np.issubdtype(array.dtype, np.integer):
        return jnp.asarray(array, jnp.int32)
    return jnp.asarray(array)


def dataset_problem(
    name: str, init: Callable, loss: Callable, accuracy: Callable | None, dataset: Dataset,
    data: DataConfig, seed: int, num_workers: int,
) -> Problem:
    """Batches of rows {"x", "y"} of a train set; metrics on a fixed train subset and the test set."""
    train_x, train_y = device_array(dataset.train_x), device_array(dataset.train_y)

    def gather(rows: jax.Array) -> Batch:
        return {"x": train_x[rows], "y": train_y[rows]}

    eval_batch = gather(jnp.asarray(eval_subset(len(dataset.train_y), seed)))
    test_batch = {"x": device_array(dataset.test_x), "y": device_array(dataset.test_y)}

    def evaluate(params: Params) -> dict[str, jax.Array]:
        # The objective measured is the loss on a fixed sample of training rows: its gradient
        # there is exact (grad_norm_sq); its optimum is unknown (suboptimality NaN).
        return metrics(loss(params, eval_batch), accuracy(params, test_batch) if accuracy else NAN,
                       squared_norm(jax.grad(loss)(params, eval_batch)))

    return sampled_problem(name, init, loss, evaluate, gather, dataset.labels, len(dataset.train_y), data, seed, num_workers)
