"""Server update rules: how the server turns the gradients of one update into new parameters.

One server update combines G gradients (one for async, K for K-sync, ...; padded to a fixed G
with weight-0 rows so shapes never change). For each gradient l, in the style of optax
(factory captures hyperparameters, per-step inputs are keyword-only):

1. DC-ASGD (Zheng et al. 2017, arXiv:1609.08326), when ``dc_lambda > 0``: compensate the delay
   with the diagonal Hessian approximation g*g,  g_l <- g_l + lam * g_l*g_l*(w - w_bak_l), where
   w is the server's current parameters and w_bak_l the ones gradient l was computed at. The
   adaptive variant uses lam = dc_lambda / sqrt(MeanSquare + 1e-7) elementwise, with MeanSquare an
   exponential moving average (rate 0.95) of g*g kept per worker, updated by the worker's gradient
   before it is used (the paper's DC-ASGD-a).
2. Scale by a staleness factor of tau_l (see `staleness_factor`).
3. Sum weight_l * factor_l * g_l into one gradient (weights come from the trace: 1/K for a K-sync
   average, 1 for async, 0 for padding; rows of weight 0 are ignored even if they hold NaN).
4. Run any optax optimizer (optionally with an optax learning-rate schedule) on that gradient.

Everything is a pure function of its inputs: jittable with static G and usable inside
`jax.lax.scan`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..scenario.config import STALENESS_RULES, OptimizerConfig
from ..errors import ScenarioError
from ..scenario.optimizer import make_optimizer, unknown_choice
from ..scenario.plugins import load_object

__all__ = [
    "ServerRule",
    "ServerState",
    "make_server_rule",
    "staleness_factor",
    "dc_compensate",
]

Params = Any
DC_MEAN_SQUARE_RATE = 0.95  # DC-ASGD-a's moving-average rate for MeanSquare (Zheng et al. 2017)
DC_EPSILON = 1e-7  # DC-ASGD-a's epsilon under the square root (Zheng et al. 2017)


class ServerState(NamedTuple):
    opt_state: optax.OptState
    mean_square: Params | None  # adaptive DC-ASGD: per leaf, [num_workers, *leaf.shape]; else None


@dataclass(frozen=True)
class ServerRule:
    """``init(params) -> state``; ``apply(params, state, grads, *, weights, staleness, workers,
    read_params) -> (params, state)``. `grads` and `read_params` have a leading axis G.
    `needs_read_params`: whether `apply` uses `read_params` (DC-ASGD); pass None otherwise."""

    init: Callable[[Params], ServerState]
    apply: Callable[..., tuple[Params, ServerState]]
    needs_read_params: bool


def staleness_factor(rule: str, tau: jax.Array, num_workers: int, power: float = 0.5, *, learning_rate: float = 1.0,
                     smoothness: float | None = None) -> jax.Array:
    """The step multiplier for gradients of staleness `tau` (any shape), float32.

    none: 1. inverse: 1/max(tau, 1), the alpha0/tau of Zhang et al. 2016 (arXiv:1511.05950), alpha0
    at tau = 0. poly: 1/(1 + tau)^power. adaptive: min(1, num_workers/tau), the delay-adaptive step
    gamma n / max(n, tau) of Mishchenko, Bach, Even & Woodworth 2022 (arXiv:2206.07638), 1 at tau = 0.
    koloskova: eta_t = eta while tau <= the concurrency (the workers), else min(eta, 1/(4 L tau)),
    Koloskova, Stich & Jaggi 2022 (arXiv:2206.08307, eq. 11), with eta = ``learning_rate`` and
    L = ``smoothness``: the factor is min(1, 1/(4 L tau eta)) beyond the workers.
    """
    tau = jnp.asarray(tau, jnp.float32)
    if rule == "none":
        return jnp.ones_like(tau)
    if rule == "inverse":
        return 1.0 / jnp.maximum(tau, 1.0)
    if rule == "poly":
        return (1.0 + tau) ** (-power)
    if rule == "adaptive":
        return jnp.minimum(1.0, num_workers / jnp.maximum(tau, 1.0))
    if rule == "koloskova":
        if smoothness is None or not smoothness > 0:
            raise ScenarioError("optimizer.smoothness", "the koloskova rule needs L > 0 (the objective's smoothness)")
        cap = 1.0 / (4.0 * smoothness * jnp.maximum(tau, 1.0) * learning_rate)
        return jnp.where(tau <= num_workers, 1.0, jnp.minimum(1.0, cap)).astype(jnp.float32)
    raise unknown_choice("optimizer.staleness_rule", f"unknown staleness rule {rule!r}", rule, STALENESS_RULES)


def dc_compensate(g: jax.Array, w: jax.Array, w_bak: jax.Array, lam: jax.Array | float) -> jax.Array:
    """DC-ASGD's compensated gradient g + lam * g*g*(w - w_bak) (elementwise; THEORY.md C6)."""
    return g + lam * g * g * (w - w_bak)


def staleness_function(opt: OptimizerConfig, num_workers: int) -> Callable[[jax.Array], jax.Array]:
    """tau -> the step multiplier of ``optimizer.staleness_rule``: a built-in rule, or the user's
    ``"pkg.module:function"`` called as ``function(staleness, num_workers)`` (see the README)."""
    rule = opt.staleness_rule
    if ":" in rule:
        function = load_object(rule, "optimizer.staleness_rule")
        return lambda tau: jnp.asarray(function(jnp.asarray(tau, jnp.float32), num_workers), jnp.float32)
    power, rate, smoothness = float(opt.staleness_power), float(opt.learning_rate), opt.smoothness
    staleness_factor(rule, 0, num_workers, power, learning_rate=rate, smoothness=smoothness)  # validates the rule
    return lambda tau: staleness_factor(rule, tau, num_workers, power, learning_rate=rate, smoothness=smoothness)


def make_server_rule(opt: OptimizerConfig, num_workers: int) -> ServerRule:
    """The server rule `opt` describes; validates it (ScenarioError) before returning."""
    power, lam0 = float(opt.staleness_power), float(opt.dc_lambda)
    factor = staleness_function(opt, num_workers)
    if power < 0:
        raise ScenarioError("optimizer.staleness_power", f"= {power}: must be >= 0 (larger: smaller stale steps)")
    if not lam0 >= 0:
        raise ScenarioError("optimizer.dc_lambda", f"= {lam0}: must be >= 0 (0 turns DC-ASGD off)")
    if num_workers < 1:
        raise ValueError(f"num_workers = {num_workers}: must be >= 1")
    tx = make_optimizer(opt)
    use_dc, adaptive = lam0 > 0, lam0 > 0 and opt.dc_adaptive

    def init(params: Params) -> ServerState:
        mean_square = jax.tree.map(lambda p: jnp.zeros((num_workers, *jnp.shape(p)), jnp.result_type(p)), params) if adaptive else None
        return ServerState(tx.init(params), mean_square)

    def apply(
        params: Params, state: ServerState, grads: Params, *,
        weights: jax.Array, staleness: jax.Array, workers: jax.Array, read_params: Params | None = None,
    ) -> tuple[Params, ServerState]:
        weights = jnp.asarray(weights, jnp.float32)
        live = weights > 0
        mean_square = state.mean_square
        if use_dc:
            if read_params is None:
                raise ValueError("DC-ASGD (optimizer.dc_lambda > 0) needs read_params, the parameters each gradient was computed at")
            if adaptive:
                lam, mean_square = _adaptive_lambda(lam0, mean_square, grads, workers, live)
            else:
                lam = jax.tree.map(lambda g: lam0, grads)
            grads = jax.tree.map(lambda g, w_bak, l, w: dc_compensate(g, w[None], w_bak, l), grads, read_params, lam, params)
        coef = jnp.where(live, weights * factor(staleness), 0.0)

        def combine(g: jax.Array) -> jax.Array:
            # sum_l coef_l g_l as a matrix-vector product: XLA:CPU's reduction over the leading
            # axis of [G, n] is ~50x slower (measured 4.2 ms for [4, 85002]). Rows of weight 0
            # drop out, even NaN ones (zeroed before the product: 0 * NaN is NaN).
            shape = (-1,) + (1,) * (g.ndim - 1)
            masked = jnp.where(live.reshape(shape), g, 0.0).reshape(g.shape[0], -1)
            return jnp.dot(coef, masked, precision=jax.lax.Precision.HIGHEST).reshape(g.shape[1:]).astype(g.dtype)

        updates, opt_state = tx.update(jax.tree.map(combine, grads), state.opt_state, params)
        return optax.apply_updates(params, updates), ServerState(opt_state, mean_square)

    return ServerRule(init, apply, use_dc)


def _adaptive_lambda(
    lam0: float, mean_square: Params, grads: Params, workers: jax.Array, live: jax.Array
) -> tuple[Params, Params]:
    """Per-gradient lam = lam0/sqrt(MeanSquare_worker + eps) and the updated MeanSquare.

    Rows are taken in order, so two gradients of one worker in one update both count.
    """

    def step(ms: Params, row: tuple[Params, jax.Array, jax.Array]) -> tuple[Params, Params]:
        g, worker, alive = row
        new = jax.tree.map(lambda m, gi: DC_MEAN_SQUARE_RATE * m[worker] + (1 - DC_MEAN_SQUARE_RATE) * gi * gi, ms, g)
        ms = jax.tree.map(lambda m, n: m.at[worker].set(jnp.where(alive, n, m[worker])), ms, new)
        return ms, jax.tree.map(lambda n: lam0 / jnp.sqrt(n + DC_EPSILON), new)

    mean_square, lam = jax.lax.scan(step, mean_square, (grads, jnp.asarray(workers, jnp.int32), live))
    return lam, mean_square
