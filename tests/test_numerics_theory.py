"""THEORY.md checks that need the numerics (STYLE.md 7, level 2): C3, C5, C6, C9, C11.

Predictions come from ``asgd_sim.theory`` or from a hand computation in numpy, never from a
number the engine produced. Scenarios run on the ideal cluster of the theory (zero latency,
infinite bandwidth, zero apply time). Seeds are fixed; sample sizes are chosen so that the
statistical error is a fraction of the tolerance (noted next to each check).
"""

from __future__ import annotations

import functools
import math
import sys
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from asgd_sim.validation import theory
from asgd_sim.timing.engine import TimingEngine, simulate_timing
from asgd_sim.numerics.engine import NumericsEngine
from asgd_sim.numerics.stream import Metrics, drive
from asgd_sim.numerics.problems import build_problem
from asgd_sim.runner import simulate
from asgd_sim.trace import APPLIED

from helpers import EXP1, MLP32, ideal_scenario, quadratic

# The ideal cluster of tests/helpers.py under this file's scenario name, with waves of at most 16 rows.
scenario = functools.partial(ideal_scenario, "theory-test", {"run": {"batch_cap": 16}})


def flat(params: Any) -> np.ndarray:
    return np.asarray(ravel_pytree(params)[0])


def first_update_below(result: Any, level: float) -> int:
    """The first evaluated update whose excess loss is <= level."""
    below = np.flatnonzero(result.metrics["train_loss"] <= level)
    assert below.size, f"never reached loss {level}"
    return int(result.metrics["update"][below[0]])


# --- C3 asynchrony begets momentum (Mitliagkas et al. 2016) ----------------------------------------
#
# 1-D quadratic f = lam w^2/2, noise-free: update t applies w_{t+1} = w_t - a w_{r_t}, a = alpha*lam,
# r_t the version its worker read. The numerics are then a fold of the trace's read versions, so
# the R replications run the timing engine only and fold in numpy (float64); one replication goes
# through `simulate` and must agree with the fold.

C3_M, C3_T, C3_A = 4, 40, 0.5


def c3_scenario(seed: int, compute: Any, stagger: float = 0.0, eval_every: int = C3_T):
    return scenario(quadratic([1.0]), run={"until_updates": C3_T, "eval_every": eval_every, "seed": seed},
                    workers=[{"count": C3_M, "compute": compute, "stagger": stagger}],
                    optimizer={"name": "sgd", "learning_rate": C3_A})


def update_reads(trace: Any, T: int) -> np.ndarray:
    """The version read by the gradient of each of the first T updates (one gradient per update)."""
    assert trace.num_update_rows >= T
    assert np.all(np.diff(trace.member_offsets[: T + 1]) == 1)
    return trace.read_version[trace.member_gid[trace.member_offsets[:T]], 0]


def fold(reads: np.ndarray, a: float) -> np.ndarray:
    """w[r, t] of every replication r (rows of `reads`), w_0 = 1, in float64."""
    R, T = reads.shape
    w = np.ones((R, T + 1))
    rows = np.arange(R)
    for t in range(T):
        w[:, t + 1] = w[:, t] - a * w[rows, reads[:, t]]
    return w


def fit_momentum(mean: np.ndarray) -> tuple[float, float, float]:
    """Least squares of mean_{t+1}-mean_t = mu (mean_t-mean_{t-1}) - k mean_t over t >= 1:
    (mu, k, residual rms relative to the rms of the left-hand side)."""
    d = np.diff(mean)
    y, X = d[1:], np.stack([d[:-1], -mean[1:-1]], axis=1)
    (mu, k), *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(mu), float(k), float(np.sqrt(np.mean((y - X @ [mu, k]) ** 2) / np.mean(y**2)))


def test_c3_simulation_equals_the_numpy_fold() -> None:
    sc = c3_scenario(7, EXP1, eval_every=1)
    result = simulate(sc)
    reads = update_reads(result.trace, C3_T)
    np.testing.assert_array_equal(reads, update_reads(simulate_timing(sc).trace, C3_T))
    w = fold(reads[None], C3_A)[0]
    assert abs(float(flat(result.params)[0]) - w[-1]) <= 1e-6
    np.testing.assert_allclose(result.metrics["train_loss"], 0.5 * w[result.metrics["update"]] ** 2, rtol=0, atol=1e-6)
    assert result.summary["staleness"]["max"] > 0  # really asynchronous


def test_c3_implicit_momentum() -> None:
    # R = 2000 (THEORY.md). The fit lands within ~0.001 of mu and ~1.5 % of k (several seed sets),
    # against tolerances 0.02 and 10 %.
    R = 2000
    reads = np.stack([update_reads(simulate_timing(c3_scenario(10_000 + r, EXP1)).trace, C3_T) for r in range(R)])
    w = fold(reads, C3_A)
    mean = w.mean(axis=0)
    mu, k, _ = fit_momentum(mean)
    q, k_theory = theory.implicit_momentum(C3_M), C3_A / C3_M
    assert abs(mu - q) < 0.02, (mu, q)
    assert abs(k / k_theory - 1) < 0.10, (k, k_theory)
    # The mean iterate follows the heavy-ball recursion itself, within 5 standard errors everywhere.
    predicted = theory.momentum_mean_recursion(C3_A, 1.0, C3_M, C3_T, w_prev=1.0 + C3_A)
    stderr = w.std(axis=0, ddof=1) / math.sqrt(R)
    assert np.all(np.abs(mean - predicted) <= 5 * stderr + 1e-12)


def test_c3_negative_control_fixed_delay_is_not_momentum() -> None:
    # Constant compute, staggered by T/M: staleness M-1 on every update, no randomness, so one run
    # is its own mean. a = 0.5 lies above the delayed-GD limit for tau = 3 (0.445) but the heavy
    # ball with mu = 3/4, k = a/4 is stable: the two dynamics are not the same.
    reads = update_reads(simulate_timing(c3_scenario(0, 1.0, stagger=1.0 / C3_M)).trace, C3_T)
    assert np.all(np.arange(C3_T) - reads == np.minimum(np.arange(C3_T), C3_M - 1))
    mean = fold(reads[None], C3_A)[0]
    mu, k, _ = fit_momentum(mean)
    q, k_theory = theory.implicit_momentum(C3_M), C3_A / C3_M
    assert abs(mu - q) > 0.05 or abs(k / k_theory - 1) > 0.15, (mu, k)
    assert not theory.delayed_gd_is_stable(C3_A, 1.0, C3_M - 1)
    assert np.all(np.abs(theory.momentum_char_poly_roots(C3_A, 1.0, C3_M)) < 1)
    heavy_ball = theory.momentum_mean_recursion(C3_A, 1.0, C3_M, C3_T, w_prev=1.0 + C3_A)
    assert np.max(np.abs(mean[-8:])) > 1.0 > 10 * np.max(np.abs(heavy_ball[-8:]))


# --- C5 n-softsync and the staleness-aware step (Zhang et al. 2016) --------------------------------

C5_LEARNERS = 16
LOW_VARIANCE = {"dist": "lognormal", "mean": 1.0, "cv": 0.1}


def softsync(n: int, gradients: int, **kw: Any):
    c = C5_LEARNERS // n  # n-softsync: the server updates after c = floor(lambda/n) gradients
    updates = gradients // c
    return scenario(quadratic({"min": 0.25, "max": 1.0}, dim=16, noise=0.1),
                    run={"until_updates": updates, "eval_every": max(1, updates // 40), "max_loss": 1e3, "seed": 3},
                    workers=[{"count": C5_LEARNERS, "compute": LOW_VARIANCE}],
                    algorithm={"kind": "k_batch_async", "k": c}, **kw)


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_c5_softsync_mean_staleness(n: int) -> None:
    # 300 updates per learner: the start-up transient is < 1 % of the mean (tolerance 5 %).
    trace = simulate_timing(softsync(n, C5_LEARNERS * 300)).trace
    measured = trace.staleness[trace.fate == APPLIED].mean()
    expected = theory.softsync_mean_staleness(C5_LEARNERS, n)
    assert abs(measured / expected - 1) < 0.05, (measured, expected)


def test_c5_staleness_aware_step() -> None:
    # alpha0 = 0.8 with lam_max = 1: hardsync (n = 1) sees staleness ~1 (limit eta lam < 1, C1), so
    # 0.8 is close to the largest step it takes; n = 4 (tau ~ 3.75, limit ~0.4) and n = 16 (tau ~ 15,
    # limit ~0.1) must diverge with it. alpha0/tau brings the step back under the limit.
    gradients, step = C5_LEARNERS * 300, {"name": "sgd", "learning_rate": 0.8}
    runs = {(n, rule): simulate(softsync(n, gradients, optimizer={**step, "staleness_rule": rule}))
            for n, rule in [(1, "none"), (4, "none"), (16, "none"), (4, "inverse"), (16, "inverse")]}
    hard = runs[1, "none"]
    assert not hard.summary["diverged"]
    for n in (4, 16):
        assert runs[n, "none"].summary["diverged"], f"{n}-softsync with a fixed step should diverge"

    def floor(result: Any) -> float:  # the noise floor: the mean loss over the second half of the run
        loss = result.metrics["train_loss"]
        return float(np.mean(loss[len(loss) // 2:]))

    initial = hard.metrics["train_loss"][0]
    assert floor(hard) < 0.05 * initial  # hardsync reached its floor
    for n in (4, 16):
        run = runs[n, "inverse"]
        assert not run.summary["diverged"]
        assert run.summary["gradients"] == pytest.approx(hard.summary["gradients"], rel=0.01)  # equal gradient count
        assert floor(run) < 1.5 * floor(hard), (n, floor(run), floor(hard))


# --- C6 DC-ASGD (Zheng et al. 2017) -----------------------------------------------------------------

def run_numerics(sc: Any, problem: Any) -> tuple[str, Metrics]:
    """What `simulate` does, with a problem built once for several runs (saves its compilation)."""
    numerics = NumericsEngine(sc, problem)
    metrics = Metrics()
    stopped = drive(TimingEngine(sc, param_bytes=problem.param_bytes), numerics, metrics)
    return stopped, metrics


@pytest.mark.slow
def test_c6_dc_asgd_no_worse_than_asgd(record_property: Any) -> None:
    # The exact formula is unit-tested in tests/test_rules.py. Here: 8 async workers (the largest M
    # of this check) on an MLP, 3 seeds, common random numbers (each seed gives every variant the same
    # schedule and batches). Report-only ordering; assert only "no worse than +10 %".
    variants = {"asgd": {}, "dc": {"dc_lambda": 0.04}, "dc_adaptive": {"dc_lambda": 2.0, "dc_adaptive": True}}
    losses: dict[str, list[float]] = {name: [] for name in variants}
    for seed in range(3):
        base = scenario(MLP32, run={"until_updates": 400, "eval_every": 400, "seed": seed},
                        workers=[{"count": 8, "compute": EXP1}], optimizer={"learning_rate": 0.3})
        problem = build_problem(base, 8)
        for name, options in variants.items():
            sc = scenario(MLP32, run={"until_updates": 400, "eval_every": 400, "seed": seed},
                          workers=[{"count": 8, "compute": EXP1}], optimizer={"learning_rate": 0.3, **options})
            stopped, metrics = run_numerics(sc, problem)
            assert stopped == "until_updates"
            losses[name].append(metrics.last("train_loss"))
    means = {name: float(np.mean(values)) for name, values in losses.items()}
    ordering = " < ".join(sorted(means, key=means.get))
    record_property("c6_final_loss_means", means)
    record_property("c6_ordering", ordering)
    print(f"C6 M=8 mean final loss: {means} ordering: {ordering}")
    for name in ("dc", "dc_adaptive"):
        assert means[name] <= 1.10 * means["asgd"], (name, means)


# --- C9 delay-adaptive step (Mishchenko et al. 2022) ------------------------------------------------

C9_EIGEN = {"min": 0.1, "max": 1.0}
C9_DIM, C9_ETA, C9_FAST = 8, 0.1, 7


def c9_run(slowdown: float, rule: str = "adaptive") -> Any:
    # 7 workers of mean compute 1 and one straggler `slowdown` times slower. eta = 0.1: fresh-enough
    # gradients (tau <= n = 8, factor 1) are stable, critical_step(7) = 0.209 > 0.1.
    return simulate(scenario(quadratic(C9_EIGEN, dim=C9_DIM),
                             run={"until_updates": 700, "eval_every": 5, "seed": 11},
                             workers=[{"count": C9_FAST, "compute": {"dist": "lognormal", "mean": 1.0, "cv": 0.3}},
                                      {"name": "straggler", "count": 1,
                                       "compute": {"dist": "lognormal", "mean": slowdown, "cv": 0.3}}],
                             optimizer={"name": "sgd", "learning_rate": C9_ETA, "staleness_rule": rule}))


def c9_fold(trace: Any, factor: Any) -> np.ndarray:
    """Async SGD on the noise-free quadratic by hand (float64): w_{t+1} = w_t - eta f(tau_t) A w_{r_t}."""
    lams = np.linspace(C9_EIGEN["min"], C9_EIGEN["max"], C9_DIM)
    T = trace.num_update_rows
    reads = update_reads(trace, T)
    w = np.ones((T + 1, C9_DIM))
    for t in range(T):
        w[t + 1] = w[t] - C9_ETA * factor(t - reads[t]) * lams * w[reads[t]]
    return w


def test_c9_delay_adaptive_step_ignores_the_straggler() -> None:
    n = C9_FAST + 1  # the rule's n: the number of workers
    runs = {s: c9_run(s) for s in (10.0, 100.0)}
    target = 1e-3 * runs[10.0].metrics["train_loss"][0]
    iterations = {s: first_update_below(run, target) for s, run in runs.items()}
    assert abs(iterations[100.0] / iterations[10.0] - 1) < 0.10, iterations
    # The rule really ran: a fold by hand with eta min(1, n/tau) reproduces the runs, and the same
    # fold with the plain step (a straggler's gradient at full step) does not.
    lams = np.linspace(C9_EIGEN["min"], C9_EIGEN["max"], C9_DIM)
    for run in runs.values():
        assert run.summary["staleness"]["max"] > 8 * n  # the straggler's gradients, very stale
        w = c9_fold(run.trace, lambda tau: min(1.0, n / max(tau, 1)))
        updates = run.metrics["update"]
        np.testing.assert_allclose(run.metrics["train_loss"], 0.5 * np.sum(lams * w[updates] ** 2, axis=1), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(flat(run.params), w[-1], rtol=0, atol=1e-6)
        plain = c9_fold(run.trace, lambda tau: 1.0)
        assert np.max(np.abs(plain[-1] - w[-1])) > 1e-4


# --- C11 EASGD conservation, local SGD == minibatch SGD, client drift -------------------------------

def test_c11_easgd_exchange_conserves_the_sum() -> None:
    # (Almost) zero curvature with gradient noise: a local step moves x_i by -lr * xi, with xi the
    # batch's noise vector (problem.make_batch), so sum_i x_i + x_center = (M+1) x0 - lr * (sum of
    # the xi of every local step taken): the exchanges must add nothing. (Eigenvalues must be > 0;
    # 1e-12 * |w| < 1e-10 is far below float32 rounding.) Each exchange is also checked against
    # theory.easgd_exchange.
    M, alpha, lr = 4, 0.3, 0.1
    sc = scenario(quadratic([1e-12] * 6, noise=1.0), run={"until_updates": 120, "eval_every": 40, "seed": 2},
                  workers=[{"count": M, "compute": EXP1}], algorithm={"kind": "easgd", "local_steps": 3, "elastic_alpha": alpha},
                  optimizer={"name": "sgd", "learning_rate": lr})
    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=numerics.problem.param_bytes)
    exchanges: list[tuple[np.ndarray, ...]] = []
    original = numerics.local._exchange

    def exchange(center: jax.Array, models: jax.Array, worker: jax.Array, shard: jax.Array, *guard: Any) -> tuple[jax.Array, jax.Array]:
        before = np.asarray(center), np.asarray(models[int(worker)])  # (read first: the call updates models in place)
        new_center, new_models = original(center, models, worker, shard, *guard)  # (guard: whether no local loss diverged)
        exchanges.append((*before, np.asarray(new_center), np.asarray(new_models[int(worker)])))
        return new_center, new_models

    numerics.local._exchange = exchange
    stopped = drive(engine, numerics, Metrics())
    assert stopped == "until_updates"
    assert len(exchanges) == 120
    for center, x_i, new_center, new_x_i in exchanges:
        np.testing.assert_allclose(new_x_i + new_center, x_i + center, rtol=0, atol=1e-6 * (1 + np.abs(x_i) + np.abs(center)).max())
        want_x, want_center = theory.easgd_exchange(x_i, center, alpha)
        np.testing.assert_allclose(new_x_i, want_x, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(new_center, want_center, rtol=1e-6, atol=1e-6)
    assert max(np.abs(c - x).max() for c, x, _, _ in exchanges) > 0.1  # the exchanges did something

    total, expected, x0 = easgd_sums(numerics, engine.trace.freeze(), M, lr)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-5)  # measured 5e-7
    assert np.abs(expected - (M + 1) * x0).max() > 0.5  # the local steps moved the sum


def easgd_sums(numerics: NumericsEngine, tr: Any, M: int, lr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-run accounting from the trace: sum_i x_i + x_center, what every local step of every
    applied push (each once) makes of (M + 1) x0, and x0."""
    used = np.unique(tr.member_gid[: tr.member_offsets[numerics.row]])
    noise = jax.vmap(numerics.problem.make_batch)(jnp.asarray(tr.worker[used], jnp.int32), jnp.asarray(tr.k[used], jnp.int32))
    x0 = flat(numerics.problem.init(jax.random.PRNGKey(0)))
    expected = (M + 1) * x0.astype(np.float64) - lr * np.asarray(noise, np.float64).sum(axis=0)
    P = numerics.P
    workers_sum = np.asarray(numerics.local.models, np.float64).reshape(M, -1)[:, :P].sum(axis=0)
    return workers_sum + np.asarray(numerics.params, np.float64).reshape(-1)[:P], expected, x0


def test_c11_easgd_with_shards_takes_each_push_s_local_steps_once() -> None:
    # Two shards updated in parallel with random apply times: one push's shard rows interleave with
    # another's in the trace. The sum sum_i x_i + x_center still moves only by the local steps, each
    # taken once (a push whose steps were taken again at its second row would break it).
    M, lr = 4, 0.1
    sc = scenario(quadratic([1e-12] * 6, noise=1.0), run={"until_updates": 80, "eval_every": 40, "seed": 3},
                  workers=[{"count": M, "compute": EXP1}], algorithm={"kind": "easgd", "local_steps": 2, "elastic_alpha": 0.3},
                  optimizer={"name": "sgd", "learning_rate": lr},
                  server={"shards": 2, "apply_time": {"dist": "exponential", "mean": 0.3}})
    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=numerics.problem.param_bytes)
    assert drive(engine, numerics, Metrics()) == "until_updates"
    tr = engine.trace.freeze()
    keys = [int(tr.members(r)[0].min()) for r in range(numerics.row)]
    assert any(keys[i] != keys[i + 1] and keys[i] in keys[i + 2:] for i in range(len(keys) - 1)), "no rows interleaved"
    total, expected, _ = easgd_sums(numerics, tr, M, lr)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-5)


def test_c11_local_sgd_one_step_is_minibatch_sgd() -> None:
    base = scenario(quadratic({"min": 0.2, "max": 1.0}, dim=6, noise=0.3), run={"until_updates": 60, "eval_every": 20, "seed": 4},
                    workers=[{"count": 4, "compute": EXP1}], optimizer={"name": "sgd", "learning_rate": 0.3})
    local = simulate(base, ["algorithm.kind=local_sgd", "algorithm.local_steps=1"])
    sync = simulate(base, ["algorithm.kind=sync"])
    for result in (local, sync):
        assert result.summary["updates"] == 60
    # The same gradients (worker, k) at the same versions: the same batches.
    for tr in (local.trace, sync.trace):
        assert tr.num_update_rows == 60
    key = lambda tr: sorted(zip(tr.worker[tr.member_gid], tr.k[tr.member_gid], tr.read_version[tr.member_gid, 0]))  # noqa: E731
    assert key(local.trace) == key(sync.trace)
    a, b = flat(local.params).astype(np.float64), flat(sync.params).astype(np.float64)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5


DRIFT_MODULE = "asgd_test_client_drift"
DRIFT_LAMS = [0.25, 0.5, 1.0, 2.0]
DRIFT_CS = [-2.0, -1.0, 1.0, 2.0]
DRIFT_SOURCE = '''
"""Worker i's local objective f_i = lam_i (w - c_i)^2 / 2 (THEORY.md C11, client drift).

Every training row holds (lam, c) of the worker whose shard it lands in: the data factory deals the
rows out exactly as the simulator will (asgd_sim.data.partition_indices with the partition stream of
the run seed); the test checks that each worker's batches hold only its own row.
"""
import jax.numpy as jnp
import numpy as np

from asgd_sim.numerics.data import data_rng, partition_indices

LAMS = {lams!r}
CS = {cs!r}
ROWS = 64


def make_model():
    def init(key):
        return jnp.zeros((), jnp.float32)

    def loss(w, batch):
        lam, c = batch["x"][:, 0], batch["x"][:, 1]
        return jnp.mean(0.5 * lam * (w - c) ** 2)

    return init, loss


def make_data(seed=0):
    parts = partition_indices(np.zeros(ROWS, np.int32), len(LAMS), "iid", 0.5, data_rng(seed, "partition"))
    x = np.zeros((ROWS, 2), np.float32)
    for worker, rows in enumerate(parts):
        x[rows] = (LAMS[worker], CS[worker])
    y = np.zeros(ROWS, np.float32)
    return {{"x": x, "y": y}}, {{"x": x[:4], "y": y[:4]}}
'''


def test_c11_local_sgd_client_drift_fixed_point(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{DRIFT_MODULE}.py").write_text(textwrap.dedent(DRIFT_SOURCE.format(lams=DRIFT_LAMS, cs=DRIFT_CS)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, DRIFT_MODULE, raising=False)
    eta, H, M = 0.2, 5, len(DRIFT_LAMS)
    sc = scenario({"model": {"name": f"{DRIFT_MODULE}:make_model"}, "data": {"factory": f"{DRIFT_MODULE}:make_data", "batch_size": 4}},
                  run={"until_updates": 40, "eval_every": 20, "seed": 1}, workers=[{"count": M, "compute": EXP1}],
                  algorithm={"kind": "local_sgd", "local_steps": H}, optimizer={"name": "sgd", "learning_rate": eta})
    problem = build_problem(sc, M)
    for worker in range(M):  # each worker sees only its own objective
        rows = np.asarray(problem.make_batch(jnp.int32(worker), jnp.int32(0))["x"])
        np.testing.assert_array_equal(rows, np.tile([DRIFT_LAMS[worker], DRIFT_CS[worker]], (len(rows), 1)))
    result = simulate(sc)
    assert result.summary["updates"] == 40 and not result.summary["diverged"]
    w = float(flat(result.params)[0])
    fixed_point = theory.local_sgd_drift_fixed_point(DRIFT_LAMS, DRIFT_CS, eta, H)
    optimum = float(np.dot(DRIFT_LAMS, DRIFT_CS) / np.sum(DRIFT_LAMS))
    # 40 rounds contract the error by (mean a_i)^40 ~ 6e-15; float32 rounding is what is left.
    assert abs(w - fixed_point) < 1e-5, (w, fixed_point)
    assert abs(fixed_point - optimum) > 0.3  # drift: not the optimum (1.067) for H > 1
