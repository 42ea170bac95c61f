"""A user's model as a `Problem`: from ``model.name = "pkg.module:factory"`` or a problem object
passed to ``asgd_sim.simulate(..., problem=...)``.

A user model is three functions (or an object with these methods):

- ``init(key)`` -> the parameters (a pytree of floating-point arrays), or ``(params, state)`` when
  the loss takes ``state``;
- ``loss(params, batch)`` -> a scalar. It may also take keyword ``key``: a PRNG key for dropout and
  other noise, a pure function of (run seed, worker, k), so a run is exact and deterministic with
  its seed (the key of gradient (worker, k) is ``fold_in(fold_in(fold_in(PRNGKey(seed), worker),
  k), 1)``, independent of the stream that draws the batch); ``key`` is None at evaluation, where
  the model runs in inference mode. It may take keyword ``state`` (batch-norm statistics and other
  mutable state, which needs ``key`` too, as its mode) and then returns ``(loss, new_state)``;
- ``accuracy(params, batch)`` -> a scalar, optional (reported as ``test_accuracy``); keyword
  ``state`` where the loss takes it.

Mutable state lives with the parameters on the server (the flat vector holds the parameters, then
the state) and is read with them, stale like them. It is not a gradient: a gradient row carries,
for the state, the change its forward pass made (read state - new state), and an update moves the
server's state by the weighted mean of the changes of its gradients (`NumericsEngine._scan`). With
no staleness this is exactly the model's own state update (e.g. batch norm's moving averages);
with staleness, each worker's change lands on the current state, as a gradient does on the
current parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
import jax
import jax.numpy as jnp

from ..errors import ScenarioError
from ..scenario.config import DataConfig
from .data import Dataset, eval_subset
from .sampling import NAN, Batch, Params, Problem, batch_key, device_array, metrics, sampled_problem, squared_norm

__all__ = ["model_problem", "takes", "DROPOUT_STREAM"]

DROPOUT_STREAM = 1  # fold_in(batch key, 1): the model's own randomness, apart from the batch draw


def takes(function: Callable, name: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``name`` (or any keyword)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature (a builtin)
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def model_problem(name: str, init: Callable, loss: Callable, accuracy: Callable | None, dataset: Dataset,
                  data: DataConfig, seed: int, num_workers: int, where: str = "model.name") -> Problem:
    """The problem of a user model on ``dataset``: batches {"x", "y"} of a worker's shard, metrics
    on a fixed train subset and the test set, as for the built-in classifiers."""
    keyed, stateful = takes(loss, "key"), takes(loss, "state")
    if stateful and not keyed:
        raise ScenarioError(where, f"{name}: its loss takes state but not key; a stateful loss needs key too "
                            "(key is None at evaluation: the model runs in inference mode then)")
    accuracy_state = accuracy is not None and takes(accuracy, "state")
    train_x, train_y = device_array(dataset.train_x), device_array(dataset.train_y)

    def gather(rows: jax.Array) -> Batch:
        return {"x": train_x[rows], "y": train_y[rows]}

    eval_batch = gather(jnp.asarray(eval_subset(len(dataset.train_y), seed)))
    test_batch = {"x": device_array(dataset.test_x), "y": device_array(dataset.test_y)}

    def split(tree: Params) -> tuple[Params, Params]:
        return (tree["params"], tree["state"]) if stateful else (tree, None)

    def eval_loss(params: Params, state: Params, batch: Batch) -> jax.Array:
        if stateful:
            return loss(params, batch, key=None, state=state)[0]
        return loss(params, batch, key=None) if keyed else loss(params, batch)

    def evaluate(tree: Params) -> dict[str, jax.Array]:
        params, state = split(tree)
        acc = NAN
        if accuracy is not None:
            acc = accuracy(params, test_batch, state=state) if accuracy_state else accuracy(params, test_batch)
        return metrics(eval_loss(params, state, eval_batch), acc, squared_norm(jax.grad(eval_loss)(params, state, eval_batch)))

    def train_loss(tree: Params, batch: Batch) -> jax.Array:
        """The mini-batch loss of a gradient; a stateful model's new state is `train_step`'s."""
        if not keyed:
            return loss(tree, batch)
        params, state = split(tree)
        if stateful:
            return loss(params, batch["data"], key=batch["key"], state=state)[0]
        return loss(params, batch["data"], key=batch["key"])

    def train_step(tree: Params, batch: Batch) -> tuple[jax.Array, Params]:
        """(loss, gradient tree): the parameters' gradient, and for the state the change the
        forward pass made to it (read - new), which the server subtracts (module docstring)."""
        params, state = tree["params"], tree["state"]

        def objective(p: Params) -> tuple[jax.Array, Params]:
            value, new_state = loss(p, batch["data"], key=batch["key"], state=state)
            return value, new_state

        (value, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
        change = jax.tree.map(lambda old, new: (old - new).astype(old.dtype), state, new_state)
        return value, {"params": grads, "state": change}

    full_init = (lambda key: dict(zip(("params", "state"), init(key)))) if stateful else init
    problem = sampled_problem(name, full_init, train_loss, evaluate, gather, dataset.labels, len(dataset.train_y), data, seed,
                              num_workers)
    if not keyed:
        return problem
    key_of, draw = batch_key(seed), problem.make_batch

    def make_batch(worker: jax.Array, k: jax.Array) -> Batch:
        return {"data": draw(worker, k), "key": jax.random.fold_in(key_of(worker, k), DROPOUT_STREAM)}

    return Problem(problem.name, problem.init, train_loss, make_batch, evaluate, problem.param_count, problem.param_bytes,
                   problem.optimum, train_step if stateful else None)
