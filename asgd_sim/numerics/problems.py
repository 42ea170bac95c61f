"""Learning problems: what a gradient is a gradient of, and which data it sees.

A `Problem` is a bundle of pure JAX functions the numerics engine composes: `init(key)` gives
the starting parameters, `loss(params, batch)` the mini-batch objective, `make_batch(worker, k)`
the mini-batch of gradient (worker, k) and `evaluate(params)` the metrics. The mini-batch is a
pure function of (run seed, worker, k) built on the device from device-resident data:

    key = fold_in(fold_in(PRNGKey(seed), worker), k)
    rows = shards[worker, randint(key, (batch_size,), 0, shard_size[worker])]

so it is jittable and `vmap`-able over int32 arrays of workers and iterations (the engine builds
all ready mini-batches in one call), a replay sees the batches the original run saw, and two
scenarios with the same data config and worker count see the same batches (common random
numbers). Sampling is with replacement, uniform within the worker's shard.

Problems (`model.name`): quadratic and least squares with known optima (for THEORY.md), logistic
regression, an MLP and a small CNN on scikit-learn's digits or a synthetic classification set, a
character-level transformer on Python's own source files, or a user model "package.module:factory".
All models are plain JAX (no flax) and are initialised from the key passed to `init`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..scenario.config import DataConfig, ModelConfig, Scenario
from .data import Dataset, data_rng, eval_subset, load_dataset, load_object, partition_indices, text_corpus
from ..errors import ScenarioError
from ..errors import closest

__all__ = ["Problem", "build_problem", "BUILTIN_MODELS"]

Params = Any
Batch = Any
BUILTIN_MODELS = ("quadratic", "least_squares", "logreg", "mlp", "cnn", "transformer")
LEAST_SQUARES_LABEL_NOISE = 0.1  # default of model.options["label_noise"]
TEXT_EVAL_WINDOWS = 256  # windows (of `context` characters) for the transformer's metrics
_HIGHEST = jax.lax.Precision.HIGHEST  # exact float32 products for the theory problems (no TF32)
_NAN = float("nan")


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


def build_problem(scenario: Scenario, num_workers: int) -> Problem:
    """The problem `scenario.model` / `scenario.data` describe, dealt out to `num_workers`."""
    model, data, seed = scenario.model, scenario.data, scenario.run.seed
    if data.batch_size < 1:
        raise ScenarioError("data.batch_size", f"= {data.batch_size}: must be >= 1")
    if model.name == "quadratic":
        return _quadratic(model, seed)
    if model.name == "least_squares":
        return _least_squares(model, data, seed, num_workers)
    if model.name == "transformer":
        return _transformer(model, data, seed, num_workers)
    if ":" in model.name:
        init, loss, accuracy = _user_model(model)
        return _dataset_problem(model.name, init, loss, accuracy, load_dataset(data, seed), data, seed, num_workers)
    if model.name in ("logreg", "mlp", "cnn"):
        dataset = load_dataset(data, seed)
        init, loss, accuracy = _classifier(model, data, dataset)
        return _dataset_problem(model.name, init, loss, accuracy, dataset, data, seed, num_workers)
    hint = closest(model.name, BUILTIN_MODELS)
    raise ScenarioError(
        "model.name",
        f"unknown model {model.name!r}" + (f": did you mean {hint!r}?" if hint else "")
        + f" (built in: {' | '.join(BUILTIN_MODELS)}; a user model is written 'package.module:factory')",
    )


# ---------------------------------------------------------------------------------------------
# Shared machinery: sampling from per-worker shards, metrics, sizes.


def _batch_key(seed: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    root = jax.random.PRNGKey(seed)
    return lambda worker, k: jax.random.fold_in(jax.random.fold_in(root, worker), k)


def _sampled_problem(
    name: str, init: Callable, loss: Callable, evaluate: Callable, gather: Callable[[jax.Array], Batch],
    labels: np.ndarray | None, n: int, data: DataConfig, seed: int, num_workers: int, optimum: Params = None,
) -> Problem:
    """A problem whose batch is `gather(example indices)` drawn from the worker's shard."""
    if data.partition == "dirichlet" and labels is None:
        raise ScenarioError("data.partition", f"'dirichlet' skews class labels, and {name}'s data has none: use 'iid'")
    parts = partition_indices(
        labels if labels is not None else np.zeros(n, np.int32),
        num_workers, data.partition, data.alpha, data_rng(seed, "partition"),
    )
    sizes = np.array([len(p) for p in parts], np.int32)
    table = np.zeros((num_workers, sizes.max()), np.int32)  # padded: row w holds worker w's examples
    for worker, part in enumerate(parts):
        table[worker, : len(part)] = part
    shards, shard_sizes = jnp.asarray(table), jnp.asarray(sizes)
    batch_key, batch_size = _batch_key(seed), data.batch_size

    def make_batch(worker: jax.Array, k: jax.Array) -> Batch:
        slots = jax.random.randint(batch_key(worker, k), (batch_size,), 0, shard_sizes[worker])
        return gather(shards[worker, slots])

    return _problem(name, init, loss, make_batch, evaluate, optimum)


def _problem(name: str, init: Callable, loss: Callable, make_batch: Callable, evaluate: Callable, optimum: Params) -> Problem:
    init = jax.jit(init)  # one compiled call instead of an eager dispatch per layer
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    return Problem(name, init, loss, make_batch, evaluate, count, 4 * count, optimum)


def _metrics(train_loss: jax.Array, test_accuracy: jax.Array | float) -> dict[str, jax.Array]:
    return {"train_loss": jnp.asarray(train_loss, jnp.float32), "test_accuracy": jnp.asarray(test_accuracy, jnp.float32)}


def _device(array: np.ndarray) -> jax.Array:
    """float -> float32, integer -> int32 (JAX's defaults without x64), on the device."""
    if np.issubdtype(array.dtype, np.floating):
        return jnp.asarray(array, jnp.float32)
    if np.issubdtype(array.dtype, np.integer):
        return jnp.asarray(array, jnp.int32)
    return jnp.asarray(array)


def _dataset_problem(
    name: str, init: Callable, loss: Callable, accuracy: Callable | None, dataset: Dataset,
    data: DataConfig, seed: int, num_workers: int,
) -> Problem:
    """Batches of rows {"x", "y"} of a train set; metrics on a fixed train subset and the test set."""
    train_x, train_y = _device(dataset.train_x), _device(dataset.train_y)

    def gather(rows: jax.Array) -> Batch:
        return {"x": train_x[rows], "y": train_y[rows]}

    eval_batch = gather(jnp.asarray(eval_subset(len(dataset.train_y), seed)))
    test_batch = {"x": _device(dataset.test_x), "y": _device(dataset.test_y)}

    def evaluate(params: Params) -> dict[str, jax.Array]:
        return _metrics(loss(params, eval_batch), accuracy(params, test_batch) if accuracy else _NAN)

    return _sampled_problem(name, init, loss, evaluate, gather, dataset.labels, len(dataset.train_y), data, seed, num_workers)


# ---------------------------------------------------------------------------------------------
# Theory problems with known optima.


def _eigenvalues(model: ModelConfig) -> np.ndarray:
    spec, dim = model.eigenvalues, model.dim
    if dim < 1:
        raise ScenarioError("model.dim", f"= {dim}: must be >= 1")
    if isinstance(spec, Mapping):
        if set(spec) != {"min", "max"}:
            raise ScenarioError("model.eigenvalues", f"= {dict(spec)}: a table needs exactly the keys min and max")
        values = np.linspace(float(spec["min"]), float(spec["max"]), dim)
    elif isinstance(spec, (int, float)):
        values = np.full(dim, float(spec))
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        values = np.asarray(spec, np.float64)
        if values.shape != (dim,):
            raise ScenarioError("model.eigenvalues", f"has {values.size} values but model.dim = {dim}: give {dim} values or set model.dim = {values.size}")
    else:
        raise ScenarioError("model.eigenvalues", f"= {spec!r}: give {{min, max}}, a list of model.dim values or a number")
    if not np.all(np.isfinite(values) & (values >= 0)):
        raise ScenarioError("model.eigenvalues", f"= {spec!r}: must be finite and >= 0 (a convex quadratic)")
    return values


def _quadratic(model: ModelConfig, seed: int) -> Problem:
    """f(w) = (w - w*)' A (w - w*) / 2, A = diag(eigenvalues), w* = 0; start at w* + 1.

    The "batch" of gradient (worker, k) is its noise vector xi ~ N(0, noise^2 I), and the batch
    loss f(w) + xi.w has gradient A(w - w*) + xi. `train_loss` is the exact f(w) - f(w*).
    """
    if model.noise < 0:
        raise ScenarioError("model.noise", f"= {model.noise}: must be >= 0 (a standard deviation)")
    curvature = jnp.asarray(_eigenvalues(model), jnp.float32)
    optimum = jnp.zeros(model.dim, jnp.float32)
    batch_key, noise, dim = _batch_key(seed), float(model.noise), model.dim

    def init(key: jax.Array) -> jax.Array:
        return optimum + 1.0

    def excess(w: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(curvature * jnp.square(w - optimum))

    def loss(w: jax.Array, xi: jax.Array) -> jax.Array:
        return excess(w) + jnp.sum(xi * w)

    def make_batch(worker: jax.Array, k: jax.Array) -> jax.Array:
        return noise * jax.random.normal(batch_key(worker, k), (dim,), jnp.float32)

    def evaluate(w: jax.Array) -> dict[str, jax.Array]:
        return _metrics(excess(w), _NAN)

    return _problem("quadratic", init, loss, make_batch, evaluate, optimum)


def _least_squares(model: ModelConfig, data: DataConfig, seed: int, num_workers: int) -> Problem:
    """Synthetic linear regression, f(w) = mean_i (x_i.w - y_i)^2 / 2 over data.samples rows.

    x_i ~ N(0, I_dim), y_i = x_i.w_true + N(0, label_noise^2) (model.options["label_noise"],
    default 0.1). The optimum is the exact least-squares solution (float64 lstsq), and
    `train_loss` = f(w) - f(w*) = (w - w*)' H (w - w*) / 2 with H = X'X/n, computed that way so it
    stays accurate (and >= 0) in float32 near the optimum. All rows are training rows.
    """
    n, dim = data.samples, model.dim
    if n < max(dim, num_workers):
        raise ScenarioError("data.samples", f"= {n}: least_squares needs at least model.dim = {dim} rows and one per worker")
    label_noise = float(model.options.get("label_noise", LEAST_SQUARES_LABEL_NOISE))
    rng = data_rng(seed, "least_squares")
    x = rng.normal(size=(n, dim))
    y = x @ rng.normal(size=dim) + label_noise * rng.normal(size=n)
    optimum_np = np.linalg.lstsq(x, y, rcond=None)[0]
    hessian = jnp.asarray(x.T @ x / n, jnp.float32)
    optimum = jnp.asarray(optimum_np, jnp.float32)
    rows_x, rows_y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

    def init(key: jax.Array) -> jax.Array:
        return jnp.zeros(dim, jnp.float32)

    def loss(w: jax.Array, batch: Batch) -> jax.Array:
        return 0.5 * jnp.mean(jnp.square(jnp.dot(batch["x"], w, precision=_HIGHEST) - batch["y"]))

    def evaluate(w: jax.Array) -> dict[str, jax.Array]:
        d = w - optimum
        return _metrics(0.5 * jnp.dot(d, jnp.dot(hessian, d, precision=_HIGHEST), precision=_HIGHEST), _NAN)

    def gather(rows: jax.Array) -> Batch:
        return {"x": rows_x[rows], "y": rows_y[rows]}

    return _sampled_problem("least_squares", init, loss, evaluate, gather, None, n, data, seed, num_workers, optimum)


# ---------------------------------------------------------------------------------------------
# Classifiers on rows of features: logistic regression, MLP, CNN.


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[..., None], axis=-1))


def _scaled_normals(key: jax.Array, shapes: Sequence[tuple[int, ...]], scales: Sequence[float]) -> list[jax.Array]:
    """Array i is ``scales[i] * jax.random.normal(split(key, len(shapes))[i], shapes[i])``, the
    float32 values that expression has under ``jax.jit``, but drawn by one call.

    Every cold run compiles its model's init, and each ``jax.random.normal`` in it compiles a
    threefry kernel of its own (0.69 s for the digits MLP's three layers on 2 cores). With JAX's
    partitionable threefry a value depends only on its key and flat position, so one vmapped draw
    at the largest size, cut to each size, gives the same values from one kernel (0.19 s). The
    scales go in as a constant array multiplied inside the draw, as XLA then rounds them like the
    per-array expression (scaling the slices afterwards moved 60 % of the values by 1 ulp). When
    padding to the largest size would cost more than the kernels it saves, the draws stay separate.
    """
    keys = jax.random.split(key, len(shapes))
    sizes = [math.prod(shape) for shape in shapes]
    largest = max(sizes)
    partitionable = getattr(jax.config, "jax_threefry_partitionable", False)  # (a JAX without the flag: draw separately)
    if not partitionable or largest * len(shapes) > max(4 * sum(sizes), 1 << 20):
        return [scale * jax.random.normal(k, shape, jnp.float32) for k, shape, scale in zip(keys, shapes, scales)]
    drawn = jax.vmap(lambda k, scale: scale * jax.random.normal(k, (largest,), jnp.float32))(keys, jnp.asarray(scales, jnp.float32))
    return [drawn[i, :size].reshape(shape) for i, (size, shape) in enumerate(zip(sizes, shapes))]


def _dense(weights: jax.Array) -> dict[str, jax.Array]:
    """A dense layer with these (fan_in x fan_out) weights and zero biases."""
    return {"w": weights, "b": jnp.zeros(weights.shape[1], jnp.float32)}


def _mlp_init(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    """He-normal weights (ReLU), zero biases."""
    shapes = list(zip(sizes[:-1], sizes[1:]))
    return [_dense(w) for w in _scaled_normals(key, shapes, [math.sqrt(2.0 / a) for a in sizes[:-1]])]


def _mlp_apply(layers: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
    return x @ layers[-1]["w"] + layers[-1]["b"][None, :]


def _cnn_init(key: jax.Array, channels: Sequence[int], classes: int) -> dict[str, Any]:
    sizes = [1, *channels]  # channels into and out of each convolution
    shapes = [(3, 3, c_in, c_out) for c_in, c_out in zip(sizes[:-1], sizes[1:])] + [(64 * sizes[-1], classes)]
    scales = [math.sqrt(2.0 / (9 * c_in)) for c_in in sizes[:-1]] + [math.sqrt(1.0 / (64 * sizes[-1]))]
    *conv_weights, out_weights = _scaled_normals(key, shapes, scales)
    convs = [{"w": w, "b": jnp.zeros(c_out, jnp.float32)} for w, c_out in zip(conv_weights, sizes[1:])]
    return {"conv": convs, "out": _dense(out_weights)}


def _cnn_apply(params: dict[str, Any], x: jax.Array) -> jax.Array:
    """3x3 'same' convolutions with ReLU on 8x8x1 images, then one dense layer."""
    h = x.reshape(x.shape[0], 8, 8, 1)
    for conv in params["conv"]:
        h = jax.lax.conv_general_dilated(h, conv["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + conv["b"][None, None, None, :])
    return h.reshape(h.shape[0], -1) @ params["out"]["w"] + params["out"]["b"][None, :]


def _classifier(model: ModelConfig, data: DataConfig, dataset: Dataset) -> tuple[Callable, Callable, Callable]:
    """(init, loss, accuracy) of a built-in classifier sized for `dataset`."""
    if dataset.labels is None:
        raise ScenarioError("model.name", f"{model.name} needs integer class labels y; the data has {dataset.train_y.dtype} y")
    features = math.prod(dataset.train_x.shape[1:])
    classes = int(max(dataset.train_y.max(), dataset.test_y.max())) + 1
    if model.name == "logreg":  # convex: start at zero, the usual choice
        init = lambda key: [{"w": jnp.zeros((features, classes), jnp.float32), "b": jnp.zeros(classes, jnp.float32)}]  # noqa: E731
        apply = _mlp_apply
    elif model.name == "mlp":
        if any(h < 1 for h in model.hidden):
            raise ScenarioError("model.hidden", f"= {list(model.hidden)}: layer widths must be >= 1")
        init = lambda key: _mlp_init(key, (features, *model.hidden, classes))  # noqa: E731
        apply = _mlp_apply
    else:
        if features != 64:
            raise ScenarioError("model.name", f"cnn needs 8x8 images (64 features); data.name = {data.name!r} has {features}: use data.name = 'digits'")
        if not model.channels or any(c < 1 for c in model.channels):
            raise ScenarioError("model.channels", f"= {list(model.channels)}: give one or more channel counts >= 1")
        init = lambda key: _cnn_init(key, model.channels, classes)  # noqa: E731
        apply = _cnn_apply

    def loss(params: Params, batch: Batch) -> jax.Array:
        return _cross_entropy(apply(params, batch["x"]), batch["y"])

    def accuracy(params: Params, batch: Batch) -> jax.Array:
        return jnp.mean(jnp.argmax(apply(params, batch["x"]), axis=-1) == batch["y"])

    return init, loss, accuracy


# ---------------------------------------------------------------------------------------------
# A character-level decoder-only transformer (GPT-2 style, pre-LayerNorm) on Python's sources.

VOCAB = 128  # ASCII codes


def _layer_norm(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    mean, var = jnp.mean(x, -1, keepdims=True), jnp.var(x, -1, keepdims=True)
    lead = (1,) * (x.ndim - 1)  # explicit broadcast of the per-feature gain and bias
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["g"].reshape(*lead, -1) + p["b"].reshape(*lead, -1)


def _transformer_init(key: jax.Array, model: ModelConfig) -> dict[str, Any]:
    """Normal(0, 0.02) weights; residual projections scaled by 1/sqrt(2 layers) (Radford et al. 2019)."""
    width, std = model.width, 0.02
    residual = std / math.sqrt(2 * model.layers)
    # One key each, in this order: qkv, proj, fc, out of every block, then embed, pos, head.
    block = [((width, 3 * width), std), ((width, width), residual), ((width, 4 * width), std), ((4 * width, width), residual)]
    drawn = block * model.layers + [((VOCAB, width), std), ((model.context, width), std), ((width, VOCAB), std)]
    weights = iter(_scaled_normals(key, [shape for shape, _ in drawn], [scale for _, scale in drawn]))
    norm = lambda: {"g": jnp.ones(width, jnp.float32), "b": jnp.zeros(width, jnp.float32)}  # noqa: E731
    blocks = [
        {
            "ln1": norm(), "qkv": next(weights), "proj": next(weights),
            "ln2": norm(), "fc": next(weights), "fc_b": jnp.zeros(4 * width, jnp.float32),
            "out": next(weights), "out_b": jnp.zeros(width, jnp.float32),
        }
        for _ in range(model.layers)
    ]
    return {
        "embed": next(weights), "pos": next(weights), "blocks": blocks,
        "ln_f": norm(), "head": next(weights),
    }


def _transformer_apply(params: dict[str, Any], tokens: jax.Array, heads: int) -> jax.Array:
    batch, length = tokens.shape
    h = params["embed"][tokens] + params["pos"][None, :length]
    causal = jnp.tril(jnp.ones((length, length), bool))
    for block in params["blocks"]:
        q, k, v = jnp.split(_layer_norm(block["ln1"], h) @ block["qkv"], 3, axis=-1)
        q, k, v = (t.reshape(batch, length, heads, -1) for t in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
        h = h + jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1) @ block["proj"]
        hidden = jax.nn.gelu(_layer_norm(block["ln2"], h) @ block["fc"] + block["fc_b"][None, None, :])
        h = h + hidden @ block["out"] + block["out_b"][None, None, :]
    return _layer_norm(params["ln_f"], h) @ params["head"]


def _transformer(model: ModelConfig, data: DataConfig, seed: int, num_workers: int) -> Problem:
    """Batches are `batch_size` random windows of the corpus's training head; test on its tail.

    An example is a window start position; workers get shards of start positions. The corpus's
    last `data.test_fraction` is held out; `test_accuracy` is next-character accuracy on up to
    256 non-overlapping windows of it, and `train_loss` is measured on 256 fixed training windows.
    """
    if data.name != "text" or data.factory is not None:
        raise ScenarioError("data.name", f"= {data.name!r}: the transformer trains on the built-in corpus; set data.name = 'text' (and no data.factory)")
    for key in ("layers", "width", "heads", "context"):
        if getattr(model, key) < 1:
            raise ScenarioError(f"model.{key}", f"= {getattr(model, key)}: must be >= 1")
    if model.width % model.heads:
        raise ScenarioError("model.heads", f"= {model.heads}: must divide model.width = {model.width}")
    context = model.context
    corpus = text_corpus()
    n_test = round(data.test_fraction * len(corpus))
    n_train = len(corpus) - n_test
    test_windows = min(TEXT_EVAL_WINDOWS, (n_test - 1) // context)
    if not 0 < data.test_fraction < 1 or test_windows < 1 or n_train <= context:
        raise ScenarioError("data.test_fraction", f"= {data.test_fraction}: leaves no full window of {context} characters to train or test on")
    tokens = jnp.asarray(corpus, jnp.int32)
    offsets = jnp.arange(context + 1)

    def gather(starts: jax.Array) -> Batch:
        windows = tokens[starts[..., None] + offsets.reshape((1,) * starts.ndim + (-1,))]
        return {"x": windows[..., :-1], "y": windows[..., 1:]}

    n_starts = n_train - context  # windows lying wholly inside the training head
    eval_batch = gather(jnp.asarray(eval_subset(n_starts, seed, TEXT_EVAL_WINDOWS)))
    test_batch = gather(n_train + context * jnp.arange(test_windows))

    def init(key: jax.Array) -> dict[str, Any]:
        return _transformer_init(key, model)

    def loss(params: Params, batch: Batch) -> jax.Array:
        return _cross_entropy(_transformer_apply(params, batch["x"], model.heads), batch["y"])

    def evaluate(params: Params) -> dict[str, jax.Array]:
        logits = _transformer_apply(params, test_batch["x"], model.heads)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == test_batch["y"])
        return _metrics(loss(params, eval_batch), accuracy)

    return _sampled_problem("transformer", init, loss, evaluate, gather, None, n_starts, data, seed, num_workers)


# ---------------------------------------------------------------------------------------------
# User models.


def _user_model(model: ModelConfig) -> tuple[Callable, Callable, Callable | None]:
    """``factory(**model.options)`` -> (init, loss) or (init, loss, accuracy)."""
    factory = load_object(model.name, "model.name")
    try:
        inspect.signature(factory).bind(**model.options)
    except TypeError as error:
        raise ScenarioError("model.options", f"= {dict(model.options)}: {model.name} does not accept them ({error})") from None
    except ValueError:  # no signature to check (a builtin); let the call decide
        pass
    out = factory(**model.options)
    if not (isinstance(out, tuple) and len(out) in (2, 3) and all(callable(f) for f in out)):
        raise ScenarioError("model.name", f"{model.name}(**model.options) must return (init, loss) or (init, loss, accuracy), got {out!r:.80}")
    init, loss, *rest = out
    _check_init(init, model.name)
    return init, loss, rest[0] if rest else None


def _check_init(init: Callable, name: str) -> None:
    """A user model's ``init(key)`` must return a pytree of floating-point arrays (the parameters
    the server updates). Anything else (an Equinox module with its activation functions, integer
    buffers, strings) would end in a long JAX traceback: say what it returned and the fix."""
    returned: dict[str, Any] = {}

    def probe(key: jax.Array) -> list[Any]:
        returned["out"] = out = init(key)
        return [leaf for leaf in jax.tree.leaves(out) if isinstance(leaf, jax.Array)]

    jax.eval_shape(probe, jax.random.PRNGKey(0))  # traced only: nothing is computed
    out = returned["out"]
    leaves = jax.tree_util.tree_flatten_with_path(out)[0]
    bad = [(path, leaf) for path, leaf in leaves if not _float_array(leaf)]
    if leaves and not bad:
        return
    kind = type(out)
    equinox = any(base.__module__.split(".")[0] == "equinox" for base in kind.__mro__)
    what = "an Equinox module" if equinox else f"a {kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else f"a {kind.__name__}"
    where = "no arrays at all" if not bad else (f"a leaf that is not a floating-point array at {jax.tree_util.keystr(bad[0][0]) or 'its root'}: "
                                                f"{_describe(bad[0][1])}")
    raise ScenarioError("model.name", f"{name}: init returned {what} with {where}; init must return a pytree (dicts, lists, tuples) "
                        "of floating-point arrays only, e.g. for an Equinox model return params from "
                        "params, static = eqx.partition(model, eqx.is_inexact_array) and rebuild it in loss with eqx.combine(params, static)")


def _float_array(leaf: Any) -> bool:
    if isinstance(leaf, float):
        return True
    dtype = getattr(leaf, "dtype", None)
    return isinstance(leaf, (jax.Array, np.ndarray)) and dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))


def _describe(leaf: Any) -> str:
    if callable(leaf):
        return f"the function {getattr(leaf, '__name__', type(leaf).__name__)}"
    dtype = getattr(leaf, "dtype", None)
    return f"an array of {dtype}" if dtype is not None else f"a {type(leaf).__name__} ({leaf!r:.30})"
