"""Theory problems with known optima: the objectives of docs/THEORY.md and of the papers'
experiments, whose gradient norm and suboptimality are computed exactly at every evaluation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ScenarioError
from ..scenario.config import DataConfig, ModelConfig
from .data import data_rng
from .sampling import HIGHEST, NAN, Batch, Problem, batch_key, make_problem, metrics, sampled_problem

__all__ = ["quadratic", "least_squares", "worst_case_quadratic", "LEAST_SQUARES_LABEL_NOISE"]

LEAST_SQUARES_LABEL_NOISE = 0.1  # default of model.options["label_noise"]


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


def quadratic(model: ModelConfig, seed: int) -> Problem:
    """f(w) = (w - w*)' A (w - w*) / 2, A = diag(eigenvalues), w* = 0; start at w* + 1.

    The "batch" of gradient (worker, k) is its noise vector xi ~ N(0, noise^2 I) (with
    ``model.noise_mode = "shared"``: one N(0, noise^2) scalar on every coordinate), and the batch
    loss f(w) + xi.w has gradient A(w - w*) + xi. `train_loss` (and `suboptimality`) is the exact
    f(w) - f(w*); `grad_norm_sq` is |A (w - w*)|^2.
    """
    if model.noise < 0:
        raise ScenarioError("model.noise", f"= {model.noise}: must be >= 0 (a standard deviation)")
    curvature = jnp.asarray(_eigenvalues(model), jnp.float32)
    optimum = jnp.zeros(model.dim, jnp.float32)
    key_of, noise, dim = batch_key(seed), float(model.noise), model.dim
    shared = model.noise_mode == "shared"  # one N(0, 1) scalar on every coordinate (default: independent)

    def init(key: jax.Array) -> jax.Array:
        return optimum + 1.0

    def excess(w: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(curvature * jnp.square(w - optimum))

    def loss(w: jax.Array, xi: jax.Array) -> jax.Array:
        return excess(w) + jnp.sum(xi * w)

    def make_batch(worker: jax.Array, k: jax.Array) -> jax.Array:
        if shared:
            return jnp.full(dim, noise, jnp.float32) * jax.random.normal(key_of(worker, k), (), jnp.float32)
        return noise * jax.random.normal(key_of(worker, k), (dim,), jnp.float32)

    def evaluate(w: jax.Array) -> dict[str, jax.Array]:
        return metrics(excess(w), NAN, jnp.sum(jnp.square(curvature * (w - optimum))), excess(w))

    return make_problem("quadratic", init, loss, make_batch, evaluate, optimum)


def least_squares(model: ModelConfig, data: DataConfig, seed: int, num_workers: int) -> Problem:
    """Synthetic linear regression, f(w) = mean_i (x_i.w - y_i)^2 / 2 over data.samples rows.

    x_i ~ N(0, I_dim), y_i = x_i.w_true + N(0, label_noise^2) (model.options["label_noise"],
    default 0.1). The optimum is the exact least-squares solution (float64 lstsq), and
    `train_loss` = f(w) - f(w*) = (w - w*)' H (w - w*) / 2 with H = X'X/n, computed that way so it
    stays accurate (and >= 0) in float32 near the optimum; `grad_norm_sq` is |H (w - w*)|^2. All
    rows are training rows.
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
        return 0.5 * jnp.mean(jnp.square(jnp.dot(batch["x"], w, precision=HIGHEST) - batch["y"]))

    def evaluate(w: jax.Array) -> dict[str, jax.Array]:
        d = w - optimum
        gradient = jnp.dot(hessian, d, precision=HIGHEST)  # of f, exactly: H (w - w*)
        excess = 0.5 * jnp.dot(d, gradient, precision=HIGHEST)
        return metrics(excess, NAN, jnp.sum(jnp.square(gradient)), excess)

    def gather(rows: jax.Array) -> Batch:
        return {"x": rows_x[rows], "y": rows_y[rows]}

    return sampled_problem("least_squares", init, loss, evaluate, gather, None, n, data, seed, num_workers, optimum)


def worst_case_quadratic(model: ModelConfig, seed: int) -> Problem:
    """Nesterov's worst-case smooth function (Nesterov 2004, section 2.1.2), the quadratic of the
    asynchronous-SGD papers' experiments (Tyurin & Richtarik 2023; Maranjyan, Tyurin & Richtarik
    2025, Section G): f(x) = x'Ax/2 - b'x with A = (L/4) tridiag(-1, 2, -1), b = -(L/4) e1, started
    at x0 = sqrt(d) e1.

    f* = -L d / (8 (d + 1)) (b'A^-1 b = (L/4) (T^-1)_11 with (T^-1)_11 = d / (d + 1)). The
    stochastic gradient is Ax - b + noise z: with ``noise_mode = "shared"`` z is one N(0, 1) scalar
    added to every coordinate, as in the papers' code (sigma^2 = noise^2 d); with "independent"
    z ~ N(0, I). `train_loss` and `suboptimality` are f(x) - f*, `grad_norm_sq` is |Ax - b|^2.
    """
    d, smoothness, noise = model.dim, float(model.smoothness), float(model.noise)
    shared = (model.noise_mode or "shared") == "shared"
    quarter = smoothness / 4.0
    f_star = -smoothness * d / (8.0 * (d + 1))
    start = np.zeros(d, np.float32)
    start[0] = math.sqrt(d)
    start_device, key_of = jnp.asarray(start), batch_key(seed)

    def hessian_times(x: jax.Array) -> jax.Array:
        neighbours = jnp.concatenate([x[1:], jnp.zeros(1, x.dtype)]) + jnp.concatenate([jnp.zeros(1, x.dtype), x[:-1]])
        return quarter * (2.0 * x - neighbours)

    def gradient(x: jax.Array) -> jax.Array:
        return hessian_times(x) + quarter * jnp.zeros(d, x.dtype).at[0].set(1.0)  # A x - b, b = -(L/4) e1

    def value(x: jax.Array) -> jax.Array:
        return 0.5 * jnp.dot(x, hessian_times(x), precision=HIGHEST) + quarter * x[0]

    def init(key: jax.Array) -> jax.Array:
        return start_device

    def loss(x: jax.Array, z: jax.Array) -> jax.Array:
        return value(x) + jnp.dot(z, x, precision=HIGHEST)  # gradient A x - b + z

    def make_batch(worker: jax.Array, k: jax.Array) -> jax.Array:
        if shared:
            return jnp.full(d, noise, jnp.float32) * jax.random.normal(key_of(worker, k), (), jnp.float32)
        return noise * jax.random.normal(key_of(worker, k), (d,), jnp.float32)

    def evaluate(x: jax.Array) -> dict[str, jax.Array]:
        gap = value(x) - f_star
        return metrics(gap, NAN, jnp.sum(jnp.square(gradient(x))), gap)

    return make_problem("worst_case_quadratic", init, loss, make_batch, evaluate, None)
