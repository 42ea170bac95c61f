"""Equivalence tests of the numerics engine (STYLE.md 7, level 3) and THEORY.md C1.

Each expectation is computed independently of the engine: a plain optax loop, delayed gradient
descent by hand in float64, the same run with another batching or sharding, a replay of the saved
trace, or the untargeted run for the target-accuracy stop. Scenarios run on the ideal cluster of
the theory (zero latency, infinite bandwidth, zero apply time) unless the check is about locks or
latency.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from asgd_sim.validation import theory
from asgd_sim.errors import ScenarioError
from asgd_sim.numerics.problems import build_problem
from asgd_sim.results.folder import write_run
from asgd_sim.runner import replay, simulate
from asgd_sim.trace import APPLIED

from helpers import EXP1, INF, LOGREG, MLP32, ideal_scenario, quadratic

# The ideal cluster of tests/helpers.py under this file's scenario name.
scenario = functools.partial(ideal_scenario, "numerics-test")


def flat(params: Any) -> np.ndarray:
    return np.asarray(ravel_pytree(params)[0])


def rel_err(a: Any, b: Any) -> float:
    a, b = flat(a).astype(np.float64), flat(b).astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- batching: vmapped waves == one gradient at a time -------------------------------------------

def test_batched_equals_one_at_a_time() -> None:
    sc = scenario(MLP32, run={"until_updates": 200, "eval_every": 100, "seed": 3},
                  workers=[{"count": 8, "compute": EXP1}])
    batched = simulate(sc, ["run.batch_cap=64"])
    single = simulate(sc, ["run.batch_cap=1"])
    # batch_cap = 1: one gradient (one async update) per vmapped call; 64: real batches.
    assert single.summary["waves"] == single.trace.num_update_rows == 200
    # Most waves hold several updates (on a CPU waves of 2 rows at M = 8: ~1.9 updates each).
    assert batched.summary["waves"] < 0.6 * single.summary["waves"]
    assert batched.trace.equals(single.trace)  # the schedule does not depend on batching
    assert rel_err(batched.params, single.params) < 1e-5
    np.testing.assert_allclose(batched.metrics["train_loss"], single.metrics["train_loss"], rtol=1e-5)
    # The run really was asynchronous (stale reads), so batching had something to batch.
    assert batched.summary["staleness"]["mean"] > 5.0


@pytest.mark.slow
@pytest.mark.parametrize("kind, options", [
    ("rennala", {"k": 3}), ("ringmaster", {"delay_threshold": 3, "stops": True}), ("local_sgd", {"local_steps": 2}),
    ("easgd", {"local_steps": 2}), ("fedbuff", {"k": 2, "local_steps": 2}), ("fedasync", {"local_steps": 2}),
])
def test_every_algorithm_batched_equals_one_at_a_time_and_replays(kind: str, options: dict, tmp_path) -> None:
    """The rounds pooled into one backward pass (rennala), stops (ringmaster) and local models
    (the rest): one gradient per call gives the same numbers, and a replay of the saved trace
    gives the original's parameters bit for bit."""
    sc = scenario(LOGREG, run={"until_updates": 40, "eval_every": 20, "seed": 4}, optimizer={"learning_rate": 0.1},
                  workers=[{"count": 6, "compute": EXP1}], algorithm={"kind": kind, **options})
    batched = simulate(sc)
    single = simulate(sc, ["run.batch_cap=1"])
    assert batched.trace.equals(single.trace) and batched.summary["updates"] == 40
    assert rel_err(batched.params, single.params) < 1e-5
    write_run(batched, tmp_path / "run")
    again = replay(tmp_path / "run")
    np.testing.assert_array_equal(flat(again.params), flat(batched.params))


def test_streaming_window_does_not_change_the_numbers() -> None:
    # The timing engine runs ahead of the numerics by run.window updates; window 1 (what a
    # value-dependent rule needs) must give the same trace and the same parameters as the default.
    sc = scenario(MLP32, run={"until_updates": 150, "eval_every": 50, "seed": 4}, workers=[{"count": 6, "compute": EXP1}])
    streamed = simulate(sc, ["run.window=1"])
    ahead = simulate(sc, ["run.window=256"])
    assert streamed.trace.equals(ahead.trace)
    assert rel_err(streamed.params, ahead.params) < 1e-6
    np.testing.assert_allclose(streamed.metrics["train_loss"], ahead.metrics["train_loss"], rtol=1e-6)


# --- one worker == a plain optax loop on the same batches ----------------------------------------

@pytest.mark.parametrize("name, options, lr, exact", [
    ("sgd", {}, 0.05, True),
    # Momentum and Adam: the engine's jitted scan lets XLA fuse `g + decay*trace` and
    # `params + update` into fused multiply-adds; a plain loop fuses differently, so single
    # elements differ by 1 ulp from the third step on (measured: <= 1.2e-7 after 60 steps of an
    # MLP, 6e-8 for logistic regression).
    # Gradients and batches are bit-identical (the sgd case), hence 1e-6 absolute.
    ("sgd", {"momentum": 0.9}, 0.05, False),
    ("adam", {}, 0.003, False),
], ids=["sgd", "momentum", "adam"])
def test_one_worker_equals_plain_optax_loop(name: str, options: dict, lr: float, exact: bool) -> None:
    N = 40
    sc = scenario(LOGREG, run={"until_updates": N, "eval_every": N, "seed": 1}, workers=[{"count": 1, "compute": 1.0}],
                  optimizer={"name": name, "learning_rate": lr, "options": options})
    result = simulate(sc)
    assert result.summary["staleness"]["max"] == 0 and result.summary["updates"] == N

    problem = build_problem(sc, 1)
    tx = getattr(optax, name)(learning_rate=lr, **options)
    params = problem.init(jax.random.PRNGKey(sc.run.seed))
    state = tx.init(params)

    @jax.jit
    def step(params: Any, state: Any, k: jax.Array) -> tuple[Any, Any]:
        grads = jax.grad(problem.loss)(params, problem.make_batch(jnp.int32(0), k))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for k in range(N):
        params, state = step(params, state, jnp.int32(k))
    expected, got = flat(params), flat(result.params)
    assert not np.array_equal(expected, flat(problem.init(jax.random.PRNGKey(sc.run.seed))))  # it trained
    # Bit for bit on a CPU. On a GPU, XLA fuses even plain SGD's `params - lr * grad` differently in
    # the engine's scan and in this loop (measured on an H200 with full-precision matmuls: 30 % of
    # the elements 1 ulp apart, <= 7.5e-9), so there the sgd case gets the others' tolerance.
    if exact and jax.default_backend() == "cpu":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# --- THEORY.md C1: round-robin workers are delayed gradient descent ------------------------------

C1_M = 4
C1_EIGEN = [0.25, 0.5, 1.0]


def c1_scenario(eta: float, updates: int, eval_every: int, **run: Any):
    # Constant compute T = 1, staggered by T/M: every update after the first M-1 has staleness M-1.
    return scenario(quadratic(C1_EIGEN), run={"until_updates": updates, "eval_every": eval_every, **run},
                    workers=[{"count": C1_M, "compute": 1.0, "stagger": 1.0 / C1_M}],
                    optimizer={"name": "sgd", "learning_rate": eta})


def delayed_gd(eta: float, lams: np.ndarray, tau: int, steps: int) -> np.ndarray:
    """w_{k+1} = w_k - eta A w_{k-tau} (w_j = w_0 = 1 for j < 0) in float64; rows w_0..w_steps."""
    w = np.ones((steps + 1, len(lams)))
    for k in range(steps):
        w[k + 1] = w[k] - eta * lams * w[max(k - tau, 0)]
    return w


def excess_loss(w: np.ndarray, lams: np.ndarray) -> np.ndarray:
    return 0.5 * np.sum(lams * w * w, axis=-1)


def test_c1_round_robin_is_delayed_gd() -> None:
    tau, N, eta = C1_M - 1, 150, 0.3  # 0.3 < critical_step(3) = 0.445: a converging run
    result = simulate(c1_scenario(eta, N, 10))
    tr = result.trace
    applied = tr.fate == APPLIED
    np.testing.assert_array_equal(tr.staleness[applied][:N], np.minimum(np.arange(N), tau))
    lams = np.asarray(C1_EIGEN)
    w = delayed_gd(eta, lams, tau, N)
    assert np.max(np.abs(flat(result.params) - w[N])) <= 1e-6
    # The whole trajectory, at every evaluation, not just the end point.
    updates = result.metrics["update"]
    np.testing.assert_allclose(result.metrics["train_loss"], excess_loss(w[updates], lams), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_c1_stability_threshold(factor: float) -> None:
    tau = C1_M - 1
    eta = factor * theory.critical_step(tau, max(C1_EIGEN))
    horizon = 50 * (2 * C1_M - 1)  # THEORY.md C1: 10x growth within ~50(2M-1) updates above the limit
    half_period = theory.divergence_period(tau) // 2
    max_loss = 1e3
    result = simulate(c1_scenario(eta, 5000 if factor > 1 else horizon, half_period, max_loss=max_loss))
    loss, updates = result.metrics["train_loss"], result.metrics["update"]
    initial = loss[0]
    if factor < 1:
        assert not result.summary["diverged"]
        assert loss[-1] < 0.1 * initial  # the excess loss falls
        assert np.max(loss[updates >= horizon // 2]) < initial
        return
    assert np.max(loss[(updates > 0) & (updates <= horizon)]) >= 10 * initial  # grows >= 10x
    # A small run.max_loss ends the run cleanly (no exception) as diverged.
    summary = result.summary
    assert summary["diverged"] is True and summary["stopped"] == "diverged"
    at = summary["diverged_at_update"]
    assert isinstance(at, int)
    # Independently: where delayed GD's loss first exceeds max_loss (a gradient's loss is taken at
    # the version it read, M-1 updates old; waves and evaluations add a few updates of slack).
    predicted = int(np.argmax(excess_loss(delayed_gd(eta, np.asarray(C1_EIGEN), tau, 5000), np.asarray(C1_EIGEN)) > max_loss))
    assert 0 < predicted < 5000
    assert predicted - 2 * C1_M <= at <= predicted + 2 * C1_M + half_period
    assert result.metrics["update"][-1] == result.trace.num_update_rows < 5000


# --- replay of a saved trace == the original run -------------------------------------------------

def test_replay_reproduces_the_run(tmp_path) -> None:
    sc = scenario(LOGREG, run={"until_updates": 200, "eval_every": 50, "seed": 5}, workers=[{"count": 4, "compute": EXP1}],
                  network={"latency": 0.01}, optimizer={"learning_rate": 0.1})
    original = simulate(sc)
    write_run(original, tmp_path / "run")
    again = replay(tmp_path / "run")
    np.testing.assert_array_equal(flat(again.params), flat(original.params))
    for key, values in original.metrics.items():
        np.testing.assert_array_equal(again.metrics[key], values, err_msg=key)
    assert again.trace.equals(original.trace)

    # Another learning rate on the same schedule: the numbers change, the trace does not, and the
    # result is exactly what a fresh simulation with that rate gives (timing ignores the rate).
    other = replay(tmp_path / "run", ["optimizer.learning_rate=0.02"])
    np.testing.assert_array_equal(other.trace.u_applied, original.trace.u_applied)
    assert other.trace.equals(original.trace)
    assert rel_err(other.params, original.params) > 1e-2
    fresh = simulate(sc, ["optimizer.learning_rate=0.02"])
    np.testing.assert_array_equal(flat(other.params), flat(fresh.params))

    with pytest.raises(ScenarioError, match="replay"):
        replay(tmp_path / "run", ["workers[0].count=3"])


# --- no retracing after warm-up --------------------------------------------------------------------

class _CompileCounter:
    """Counts JAX traces and XLA backend compilations (of jitted functions and eager ops alike).

    Traces are counted too because a compilation found in JAX's persistent cache (which the
    engine enables) reports no backend compile, but it was still a retrace.
    """

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")

    def __init__(self) -> None:
        self.names: list[str] = []

    @property
    def count(self) -> int:
        return len(self.names)

    def __call__(self, event: str, duration: float, **kwargs: Any) -> None:
        if event in self.EVENTS:
            self.names.append(f"{event.rsplit('/', 1)[-1]}: {kwargs.get('fun_name')}")

    def __enter__(self) -> _CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self)


def test_no_retracing_after_warm_up() -> None:
    sc = scenario(quadratic([0.1, 0.4, 0.7, 1.0], noise=0.01), run={"eval_every": 250, "seed": 2},
                  workers=[{"count": 8, "compute": EXP1}])
    short = simulate(sc, ["run.until_updates=2000"])
    counts: dict[str, int] = {}
    with _CompileCounter() as compiles:
        def progress(updates: int, now: float) -> None:
            if updates >= 2000 and "warm" not in counts:
                counts["warm"] = compiles.count

        long = simulate(sc, ["run.until_updates=6000"], progress=progress)
        counts["end"] = compiles.count
    assert long.summary["updates"] == 6000
    # One compilation per power-of-two shape bucket (and the evaluation), not per wave.
    assert short.summary["compilations"] <= 12
    assert long.summary["compilations"] == short.summary["compilations"]
    # Nothing at all (no jitted function, no eager op with a new shape) compiles after warm-up.
    assert counts["end"] == counts["warm"], f"after update 2000: {compiles.names[counts['warm']:]}"


# --- sharding --------------------------------------------------------------------------------------

def test_sharded_equals_unsharded_in_lockstep() -> None:
    # Infinite bandwidth and zero apply time: the three shards of an update land at one instant,
    # so the schedule is the unsharded one, and an elementwise rule gives the same parameters.
    sc = scenario(LOGREG, run={"until_updates": 200, "eval_every": 100, "seed": 4}, workers=[{"count": 4, "compute": EXP1}],
                  optimizer={"learning_rate": 0.1})
    one = simulate(sc, ["server.shards=1"])
    three = simulate(sc, ["server.shards=3"])
    assert three.trace.num_update_rows == 3 * one.trace.num_update_rows
    applied = [tr.fate == APPLIED for tr in (one.trace, three.trace)]
    assert applied[0].sum() == applied[1].sum() == 200
    # (In-flight gradients at the stop may differ: the run stops at the last shard's commit.)
    for column in ("worker", "k", "t_read", "t_applied", "staleness"):
        np.testing.assert_array_equal(getattr(three.trace, column)[applied[1]], getattr(one.trace, column)[applied[0]], err_msg=column)
    assert rel_err(three.params, one.params) < 1e-6


@pytest.mark.parametrize("lock", ["rw", "shard"])
def test_sharded_with_locks_and_latency_learns(lock: str) -> None:
    sc = scenario(LOGREG, run={"until_updates": 200, "eval_every": 100, "seed": 6}, workers=[{"count": 6, "compute": EXP1}],
                  network={"latency": {"dist": "exponential", "mean": 0.02}},
                  server={"shards": 3, "lock": lock, "apply_time": {"dist": "exponential", "mean": 0.05}},
                  optimizer={"learning_rate": 0.1})
    result = simulate(sc)
    assert not result.summary["diverged"]
    assert result.summary["lock_wait_mean"] > 0  # the locks are contended
    loss = result.metrics["train_loss"]
    assert loss[-1] < 0.5 * loss[0]
    assert result.summary["final_accuracy"] > 0.8


# --- divergence and early stops ---------------------------------------------------------------------

def test_nan_divergence_ends_cleanly(tmp_path) -> None:
    sc = scenario(quadratic([0.5, 1.0, 2.0]), run={"until_updates": 500, "eval_every": 50, "max_loss": INF},
                  optimizer={"learning_rate": 1e30})
    result = simulate(sc)  # no exception
    assert result.summary["diverged"] is True and result.diverged
    assert result.summary["final_loss"] is None
    assert result.summary["diverged_at_update"] is not None
    assert not np.isfinite(result.metrics["train_loss"][-1])
    # The records agree: the last evaluation is of the parameters the (truncated) trace leads to,
    # at its time, even though divergence is noticed only at the next evaluation point.
    assert result.metrics["update"][-1] == result.summary["updates"] == result.trace.num_update_rows
    assert result.metrics["sim_time"][-1] == result.summary["sim_time"] == result.trace.u_applied[-1]
    assert result.summary["diverged_at_update"] <= result.summary["updates"]
    write_run(result, tmp_path)
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["update"] == "0" and len(rows) == len(result.metrics["update"])
    assert not math.isfinite(float(rows[-1]["train_loss"]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged"] is True and summary["final_loss"] is None


@pytest.mark.parametrize("kind, lr", [("local_sgd", 3.0), ("easgd", 3.0), ("easgd", 1e30)],
                         ids=["local_sgd", "easgd", "easgd-first-push"])
def test_local_model_divergence_records_agree(kind: str, lr: float) -> None:
    # Local SGD / EASGD notice a blow-up in a worker's local steps, before the update that would
    # use them: the run ends after the updates applied so far, and every record says so.
    sc = scenario(quadratic([0.5, 1.0, 2.0]), run={"until_updates": 500, "eval_every": 50},
                  workers=[{"count": 4, "compute": EXP1}], algorithm={"kind": kind, "local_steps": 3},
                  optimizer={"learning_rate": lr})
    result = simulate(sc)
    summary = result.summary
    assert summary["diverged"] is True and summary["stopped"] == "diverged"
    assert result.metrics["update"][-1] == summary["updates"] == result.trace.num_update_rows < 50
    assert result.metrics["sim_time"][-1] == summary["sim_time"]
    if result.trace.num_update_rows:
        assert summary["sim_time"] == result.trace.u_applied[-1]


def _located(curve: dict[str, np.ndarray], target: float, every: int) -> int | None:
    """Where a run evaluated every ``every`` updates stops for ``target``, from the accuracy after
    every update: the first evaluation at the target says in which interval it was reached, and
    the run stops at the first update of that interval at the target."""
    acc = curve["test_accuracy"]
    seen = next((u for u in range(0, len(acc), every) if acc[u] >= target), None)
    return None if seen is None else next(u for u in range(max(seen - every + 1, 0), seen + 1) if acc[u] >= target)


def test_target_accuracy_stops_the_run_where_it_was_reached() -> None:
    # The accuracy after every update (eval_every = 1, no target) is the independent reference.
    # With evaluations every 10 updates, the run must stop where the target was reached, not at
    # the evaluation that saw it (before: time to target was quantised by run.eval_every).
    base = scenario(LOGREG, run={"until_updates": 300, "eval_every": 10, "seed": 7}, workers=[{"count": 4, "compute": EXP1}],
                    optimizer={"learning_rate": 0.1})
    free = simulate(base, ["run.eval_every=1"])
    assert list(free.metrics["update"]) == list(range(301))
    # A target reached between two evaluations (the reference does not land on one).
    target, first = next((t, u) for t in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9) if (u := _located(free.metrics, t, 10)) and u % 10)
    assert first > 10, "the target must be reached, and not at once"
    stopped = simulate(base, [f"run.target_accuracy={target}"])
    summary = stopped.summary
    assert summary["stopped"] == "target_accuracy" and not summary["diverged"] and summary["time_to_target_exact"]
    assert summary["updates_to_target"] == first and summary["time_to_target"] == free.metrics["sim_time"][first]
    assert summary["target_search"]["between"] == [first // 10 * 10, first // 10 * 10 + 10] and summary["target_search"]["found"]
    # Evaluations every 10 updates up to the last one below the target, then the update where it was reached.
    assert list(stopped.metrics["update"]) == [*range(0, first, 10), first]
    for key in ("sim_time", "train_loss", "test_accuracy", "staleness_mean"):
        np.testing.assert_allclose(stopped.metrics[key], free.metrics[key][stopped.metrics["update"]], rtol=1e-5, err_msg=key)
    # The trace ends there: no update after the time the target was met.
    assert stopped.trace.num_update_rows == first == summary["updates"]
    assert np.max(stopped.trace.u_applied) <= summary["time_to_target"] == summary["sim_time"]
    assert np.all(~(stopped.trace.t_applied > summary["time_to_target"]))


def test_k_batch_async_time_to_target_is_not_quantised_by_eval_every() -> None:
    # The issue's case: K-batch-async makes few updates per second (4 gradients each), so one
    # evaluation step is a long stretch of time. Evaluated every 50 updates, the time to target
    # must still be the one evaluations after every update locate.
    base = scenario(MLP32, run={"until_updates": 200, "eval_every": 50, "seed": 1}, optimizer={"learning_rate": 0.1},
                    workers=[{"count": 8, "compute": {"dist": "shifted_exponential", "shift": 0.02, "mean": 0.05}}],
                    algorithm={"kind": "k_batch_async", "k": 4})
    free = simulate(base, ["run.eval_every=1"])
    target, first = next((t, u) for t in (0.8, 0.85, 0.9, 0.7) if (u := _located(free.metrics, t, 50)) and u % 50)
    stopped = simulate(base, [f"run.target_accuracy={target}"])
    assert stopped.summary["updates_to_target"] == first
    assert stopped.summary["time_to_target"] == free.metrics["sim_time"][first]
    quantised = free.metrics["sim_time"][-(-first // 50) * 50]  # what the first evaluation at the target said
    assert quantised - stopped.summary["time_to_target"] > 0.1


def test_metrics_at_update_zero_are_the_starting_parameters() -> None:
    # The evaluation at update 0 runs after the first waves were dispatched (so that it compiles
    # alongside them), from a copy of the starting parameters: it must not see any update.
    from asgd_sim.numerics.engine import NumericsEngine

    sc = scenario(MLP32, run={"until_updates": 120, "eval_every": 60, "seed": 5}, workers=[{"count": 4, "compute": EXP1}])
    result = simulate(sc)
    fresh = NumericsEngine(sc).evaluate()
    assert list(result.metrics["update"]) == [0, 60, 120]
    assert result.metrics["train_loss"][0] == pytest.approx(fresh["train_loss"], rel=1e-6)
    assert result.metrics["test_accuracy"][0] == pytest.approx(fresh["test_accuracy"], abs=1e-9)
    assert result.metrics["train_loss"][1] < result.metrics["train_loss"][0]  # (and the run did learn)
    assert result.metrics["staleness_mean"][0] == 0.0
