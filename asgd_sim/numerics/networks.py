"""Neural networks in plain JAX: logistic regression, an MLP and a small CNN on rows of features,
and a character-level decoder-only transformer on a text corpus that ships with Python. Each is
initialised from the key passed to its `init`; no model library is needed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ScenarioError
from ..scenario.config import DataConfig, ModelConfig
from .data import Dataset, eval_subset, text_corpus
from .sampling import Batch, Params, Problem, metrics, sampled_problem, squared_norm

__all__ = ["classifier", "transformer", "VOCAB", "TEXT_EVAL_WINDOWS"]

TEXT_EVAL_WINDOWS = 256  # windows (of `context` characters) for the transformer's metrics


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


def classifier(model: ModelConfig, data: DataConfig, dataset: Dataset) -> tuple[Callable, Callable, Callable]:
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


def transformer(model: ModelConfig, data: DataConfig, seed: int, num_workers: int) -> Problem:
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
        return metrics(loss(params, eval_batch), accuracy, squared_norm(jax.grad(loss)(params, eval_batch)))

    return sampled_problem("transformer", init, loss, evaluate, gather, None, n_starts, data, seed, num_workers)
