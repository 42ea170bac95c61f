"""Server rules against hand formulas, numpy and optax used directly (STYLE.md 7)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asgd_sim.scenario.config import DataConfig, ModelConfig, OptimizerConfig, Scenario
from asgd_sim.errors import ScenarioError
from asgd_sim.numerics.problems import build_problem
from asgd_sim.numerics.rules import dc_compensate, make_server_rule, staleness_factor

RNG = np.random.default_rng(0)
PARAMS = {"a": RNG.normal(size=(3, 2)).astype(np.float32), "b": RNG.normal(size=4).astype(np.float32)}


def grads_like(params, g: int, rng: np.random.Generator):
    return {k: rng.normal(size=(g, *v.shape)).astype(np.float32) for k, v in params.items()}


def as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


def apply(rule, params, state, grads, weights, staleness, workers, read_params=None):
    return rule.apply(
        as_jax(params), state, as_jax(grads), weights=jnp.asarray(weights, jnp.float32),
        staleness=jnp.asarray(staleness, jnp.int32), workers=jnp.asarray(workers, jnp.int32),
        read_params=None if read_params is None else as_jax(read_params),
    )


def assert_close(tree, expected, rtol=1e-6, atol=1e-6):
    for key in expected:
        np.testing.assert_allclose(np.asarray(tree[key]), expected[key], rtol=rtol, atol=atol)


# --- plain SGD and staleness factors -------------------------------------------------------


def test_sgd_without_rule_subtracts_the_weighted_sum():
    rule = make_server_rule(OptimizerConfig(name="sgd", learning_rate=0.1), num_workers=4)
    grads, weights = grads_like(PARAMS, 3, RNG), np.array([0.5, 0.25, 0.25])
    new, _ = apply(rule, PARAMS, rule.init(as_jax(PARAMS)), grads, weights, [0, 3, 7], [0, 1, 2])
    assert_close(new, {k: PARAMS[k] - 0.1 * np.tensordot(weights, grads[k], axes=1) for k in PARAMS})
    assert not rule.needs_read_params


def test_staleness_factors_match_hand_formulas():
    tau = np.array([0, 1, 2, 3, 5, 8, 10, 100])
    expected = {
        "none": np.ones(8),
        "inverse": np.array([1, 1, 1 / 2, 1 / 3, 1 / 5, 1 / 8, 1 / 10, 1 / 100]),
        "poly": (1.0 + tau) ** -0.7,
        "adaptive": np.array([1, 1, 1, 1, 1, 5 / 8, 5 / 10, 5 / 100]),  # min(1, M/tau), M = 5
    }
    for rule, values in expected.items():
        np.testing.assert_allclose(np.asarray(staleness_factor(rule, jnp.asarray(tau), 5, 0.7)), values, rtol=1e-6)


@pytest.mark.parametrize("rule_name", ["inverse", "poly", "adaptive"])
def test_apply_scales_each_gradient_by_its_staleness_factor(rule_name):
    opt = OptimizerConfig(name="sgd", learning_rate=0.2, staleness_rule=rule_name, staleness_power=0.5)
    rule = make_server_rule(opt, num_workers=2)
    tau = np.array([0, 4, 9])
    factor = {"inverse": 1 / np.maximum(tau, 1), "poly": 1 / np.sqrt(1 + tau), "adaptive": np.minimum(1, 2 / np.maximum(tau, 1))}[rule_name]
    grads, weights = grads_like(PARAMS, 3, RNG), np.array([1.0, 1.0, 0.5])
    new, _ = apply(rule, PARAMS, rule.init(as_jax(PARAMS)), grads, weights, tau, [0, 1, 0])
    assert_close(new, {k: PARAMS[k] - 0.2 * np.tensordot(weights * factor, grads[k], axes=1) for k in PARAMS})


# --- DC-ASGD -------------------------------------------------------------------------------


def test_dc_compensate_is_the_published_formula():
    g, w, w_bak = (RNG.normal(size=7).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(np.asarray(dc_compensate(g, w, w_bak, 0.3)), g + 0.3 * g * g * (w - w_bak), rtol=1e-6)


def test_dc_asgd_apply_matches_numpy():
    rule = make_server_rule(OptimizerConfig(name="sgd", learning_rate=0.1, dc_lambda=0.4), num_workers=3)
    assert rule.needs_read_params
    grads = grads_like(PARAMS, 2, RNG)
    read = {k: v[None] + 0.1 * RNG.normal(size=(2, *v.shape)).astype(np.float32) for k, v in PARAMS.items()}
    new, _ = apply(rule, PARAMS, rule.init(as_jax(PARAMS)), grads, [0.5, 0.5], [1, 2], [0, 2], read)
    compensated = {k: grads[k] + 0.4 * grads[k] ** 2 * (PARAMS[k][None] - read[k]) for k in PARAMS}
    assert_close(new, {k: PARAMS[k] - 0.1 * 0.5 * compensated[k].sum(0) for k in PARAMS})
    with pytest.raises(ValueError, match="read_params"):
        apply(rule, PARAMS, rule.init(as_jax(PARAMS)), grads, [0.5, 0.5], [1, 2], [0, 2])


def test_adaptive_dc_asgd_keeps_a_mean_square_per_worker():
    lam0, workers_per_update = 0.2, [[1, 1], [0, 2], [1, 0]]  # worker 1 twice in the first update
    rule = make_server_rule(OptimizerConfig(name="sgd", learning_rate=0.05, dc_lambda=lam0, dc_adaptive=True), num_workers=3)
    params, state = PARAMS, rule.init(as_jax(PARAMS))
    ms = {k: np.zeros((3, *v.shape), np.float32) for k, v in PARAMS.items()}
    expected = {k: v.astype(np.float64) for k, v in PARAMS.items()}
    for workers in workers_per_update:
        grads = grads_like(PARAMS, 2, RNG)
        read = {k: expected[k][None] - 0.05 * RNG.normal(size=(2, *v.shape)) for k, v in PARAMS.items()}
        total = {k: np.zeros_like(v) for k, v in expected.items()}
        for row, worker in enumerate(workers):  # Zheng et al. 2017, DC-ASGD-a, row by row
            for k in PARAMS:
                ms[k][worker] = 0.95 * ms[k][worker] + 0.05 * grads[k][row] ** 2
                lam = lam0 / np.sqrt(ms[k][worker] + 1e-7)
                total[k] += grads[k][row] + lam * grads[k][row] ** 2 * (expected[k] - read[k][row])
        params, state = apply(rule, params, state, grads, [1.0, 1.0], [1, 1], workers, read)
        expected = {k: expected[k] - 0.05 * total[k] for k in PARAMS}
        assert_close(params, expected, rtol=1e-4, atol=1e-5)
    assert_close({k: v for k, v in state.mean_square.items()}, ms, rtol=1e-5)


def test_dc_compensated_gradient_is_closer_to_the_fresh_one_on_logistic_regression():
    problem = build_problem(Scenario(model=ModelConfig(name="logreg"), data=DataConfig(batch_size=32)), num_workers=4)
    grad = jax.jit(jax.grad(problem.loss))
    sgd = jax.jit(lambda params, k: jax.tree.map(lambda p, g: p - 0.5 * g, params, grad(params, problem.make_batch(k % 4, k))))
    history = [problem.init(jax.random.PRNGKey(0))]
    for k in range(40):  # plain SGD; a stale read is a parameter version 4 updates back
        history.append(sgd(history[-1], jnp.int32(k)))
    flat = lambda tree: np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])  # noqa: E731
    ratios = []
    for t in range(16, 37, 4):
        stale_at, now = history[t], history[t + 4]
        batch = problem.make_batch(jnp.int32(1), jnp.int32(1000 + t))
        stale, fresh = grad(stale_at, batch), grad(now, batch)
        compensated = jax.tree.map(lambda g, w, w_bak: dc_compensate(g, w, w_bak, 10.0), stale, now, stale_at)
        ratios.append(np.linalg.norm(flat(compensated) - flat(fresh)) / np.linalg.norm(flat(stale) - flat(fresh)))
    assert max(ratios) < 1.0 and np.mean(ratios) < 0.995


# --- optax equivalence, padding, errors ----------------------------------------------------


@pytest.mark.parametrize("schedule", [None, "cosine_decay_schedule"])
def test_adam_equals_optax_used_directly(schedule):
    options = {"decay_steps": 5, "alpha": 0.1} if schedule else {}
    opt = OptimizerConfig(name="adam", learning_rate=0.05, options={"b1": 0.8}, schedule=schedule, schedule_options=options)
    rule = make_server_rule(opt, num_workers=4)
    lr = optax.cosine_decay_schedule(init_value=0.05, decay_steps=5, alpha=0.1) if schedule else 0.05
    tx = optax.adam(learning_rate=lr, b1=0.8)
    params, state = as_jax(PARAMS), rule.init(as_jax(PARAMS))
    reference, ref_state = as_jax(PARAMS), tx.init(as_jax(PARAMS))
    for _ in range(6):
        grads = grads_like(PARAMS, 1, RNG)
        params, state = apply(rule, params, state, grads, [1.0], [0], [2])
        updates, ref_state = tx.update({k: jnp.asarray(v[0]) for k, v in grads.items()}, ref_state, reference)
        reference = optax.apply_updates(reference, updates)
    assert_close(params, {k: np.asarray(v) for k, v in reference.items()})


@pytest.mark.parametrize("dc_adaptive", [False, True])
def test_padded_rows_change_nothing(dc_adaptive):
    opt = OptimizerConfig(name="adam", learning_rate=0.05, staleness_rule="poly", dc_lambda=0.3, dc_adaptive=dc_adaptive)
    rule = make_server_rule(opt, num_workers=4)
    grads = grads_like(PARAMS, 2, RNG)
    read = {k: v[None] + 0.1 * RNG.normal(size=(2, *v.shape)).astype(np.float32) for k, v in PARAMS.items()}
    pad = lambda tree, fill: {k: np.concatenate([v, np.full((2, *v.shape[1:]), fill, v.dtype)]) for k, v in tree.items()}  # noqa: E731
    state = rule.init(as_jax(PARAMS))
    real, real_state = apply(rule, PARAMS, state, grads, [0.5, 0.5], [1, 3], [0, 1], read)
    padded, padded_state = apply(rule, PARAMS, state, pad(grads, np.nan), [0.5, 0.5, 0.0, 0.0], [1, 3, 0, 0], [0, 1, 2, 3], pad(read, np.nan))
    assert_close(padded, {k: np.asarray(v) for k, v in real.items()}, rtol=0, atol=0)
    for a, b in zip(jax.tree.leaves(real_state), jax.tree.leaves(padded_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_optimizer_settings_raise_scenario_errors_with_suggestions():
    cases = [
        (dict(name="adamm"), r"optimizer\.name: 'adamm' is not an optax optimizer: did you mean 'adam'\?"),
        (dict(name="adam", options={"bb1": 0.9}), r"optimizer\.options\.bb1: .*did you mean 'b1'\?"),
        (dict(name="sgd", schedule="cosine_decay_schedul"), r"optimizer\.schedule: .*did you mean 'cosine_decay_schedule'\?"),
        (dict(name="sgd", schedule="cosine_decay_schedule"), r"optimizer\.schedule_options: .*decay_steps"),
        (dict(staleness_rule="invers"), r"optimizer\.staleness_rule: .*did you mean 'inverse'\?"),
        (dict(name="lbfgs"), r"optimizer\.name: optax\.lbfgs cannot run as a server rule"),
        (dict(dc_lambda=-1.0), r"optimizer\.dc_lambda"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(ScenarioError, match=pattern):
            make_server_rule(OptimizerConfig(**kwargs), num_workers=2)


def test_jit_and_scan_over_ten_updates_traces_once_and_matches_a_loop():
    rule = make_server_rule(OptimizerConfig(name="adam", learning_rate=0.01, staleness_rule="inverse", dc_lambda=0.1, dc_adaptive=True), 3)
    traces = []

    def window(params, state, grads, weights, staleness, workers, read):
        traces.append(1)  # runs only while tracing

        def step(carry, update):
            g, w, s, k, r = update
            return rule.apply(*carry, g, weights=w, staleness=s, workers=k, read_params=r), None

        return jax.lax.scan(step, (params, state), (grads, weights, staleness, workers, read))[0]

    run = jax.jit(window)

    def inputs(seed):
        rng = np.random.default_rng(seed)
        grads = {k: rng.normal(size=(10, 2, *v.shape)).astype(np.float32) for k, v in PARAMS.items()}
        read = {k: (v + 0.1 * rng.normal(size=(10, 2, *v.shape))).astype(np.float32) for k, v in PARAMS.items()}
        weights = np.where(rng.random((10, 2)) < 0.8, 0.5, 0.0).astype(np.float32)
        return as_jax(grads), jnp.asarray(weights), jnp.asarray(rng.integers(0, 5, (10, 2)), jnp.int32), jnp.asarray(rng.integers(0, 3, (10, 2)), jnp.int32), as_jax(read)

    params, state = as_jax(PARAMS), rule.init(as_jax(PARAMS))
    first = run(params, state, *inputs(1))
    second = run(*first, *inputs(2))
    assert len(traces) == 1
    loop, apply_one = (params, state), jax.jit(rule.apply)
    for window_inputs in (inputs(1), inputs(2)):
        grads, weights, staleness, workers, read = window_inputs
        for i in range(10):
            row = lambda tree: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
            loop = apply_one(*loop, row(grads), weights=weights[i], staleness=staleness[i], workers=workers[i], read_params=row(read))
    assert_close(second[0], {k: np.asarray(v) for k, v in loop[0].items()}, rtol=1e-5, atol=1e-6)
