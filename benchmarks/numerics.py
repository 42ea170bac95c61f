"""End-to-end `simulate` (timing + numerics) against the loop researchers write by hand.

The hand loop: a deque of past parameter versions, one jitted value_and_grad per update at a
random past version (staleness uniform in [0, M)), one jitted SGD step. Same model (digits MLP
64-256-256-10, batch 32), same mini-batches, same number of updates, in the same process.
`end_to_end` times both from building the problem (data on the device) through compilation to the
last update, with JAX's persistent compilation cache off (a cold start for both); `end_to_end_cached`
does the same with the cache on and already filled for both sides (a rerun, where compiled code
comes from disk: asgd-sim keeps its cache on by default, a hand loop can too); `steady` compares
rates after the first 10 % of updates (everything compiled). One-time costs of the process
(imports, loading the digits data, starting JAX) are paid before any timing, so neither side
carries them. Each figure is the median of ``--repeat`` alternating runs (the machines are noisy).
Prints one JSON object.

    .venv/bin/python benchmarks/numerics.py [--updates N] [--workers 8 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("ASGD_SIM_JAX_CACHE", "off")  # measure cold starts: no compiled code from earlier runs

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgd_sim.numerics.problems import build_problem
from asgd_sim.scenario.files import scenario_from_dict
from asgd_sim.timing.engine import TimingEngine
from asgd_sim.numerics.engine import NumericsEngine
from asgd_sim.numerics.stream import Metrics, drive


# Issue 3's targets: simulate / hand loop, in updates/s, per backend and worker count.
TARGETS = {"cpu": {8: 1.0, 64: 1.3}, "gpu": {64: 10.0}}


def scenario(workers: int, updates: int):
    return scenario_from_dict({
        "name": f"bench-mlp-{workers}",
        "run": {"until_updates": updates, "eval_every": updates, "batch_cap": 64},
        "workers": [{"count": workers, "compute": {"dist": "exponential", "mean": 0.05}}],
        "network": {"latency": 0.0, "bandwidth": float("inf"), "server_bandwidth": float("inf")},
        "server": {"apply_time": 0.0, "lock": "none"},
        "model": {"name": "mlp", "hidden": [256, 256]},
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
    })


def hand_loop(workers: int, updates: int, seed: int = 0) -> float:
    """The baseline: one gradient and one step per update, at a random stale version.

    Timed like the simulator: from building the problem (data on the device) to the last update.
    """
    start = time.perf_counter()
    sc = scenario(workers, updates)
    problem = build_problem(sc, workers)
    params = problem.init(jax.random.PRNGKey(0))
    tx = optax.sgd(0.01)
    state = tx.init(params)

    @jax.jit
    def grad(p, worker, k):
        return jax.value_and_grad(problem.loss)(p, problem.make_batch(worker, k))

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(seed)
    history = collections.deque([params], maxlen=workers)
    for k in range(updates):
        tau = int(rng.integers(0, len(history)))
        loss, g = grad(history[-1 - tau], jnp.int32(k % workers), jnp.int32(k))
        params, state = step(params, state, g)
        history.append(params)
    jax.block_until_ready(params)
    return updates / (time.perf_counter() - start)


def hand_loop_warm(workers: int, updates: int) -> float:
    """The hand loop's steady rate: its compiled functions reused, timed after 10 % warm-up."""
    sc = scenario(workers, updates)
    problem = build_problem(sc, workers)
    params = problem.init(jax.random.PRNGKey(0))
    tx = optax.sgd(0.01)
    state = tx.init(params)
    grad = jax.jit(lambda p, w, k: jax.value_and_grad(problem.loss)(p, problem.make_batch(w, k)))
    step = jax.jit(lambda p, s, g: (lambda u_s: (optax.apply_updates(p, u_s[0]), u_s[1]))(tx.update(g, s, p)))
    rng = np.random.default_rng(1)
    history = collections.deque([params], maxlen=workers)
    warm = updates // 10
    for k in range(updates):
        if k == warm:
            jax.block_until_ready(params)
            start = time.perf_counter()
        tau = int(rng.integers(0, len(history)))
        loss, g = grad(history[-1 - tau], jnp.int32(k % workers), jnp.int32(k))
        params, state = step(params, state, g)
        history.append(params)
    jax.block_until_ready(params)
    return (updates - warm) / (time.perf_counter() - start)


def simulator(workers: int, updates: int) -> tuple[float, float, dict]:
    """End-to-end updates/s (build + compile + run) and steady-state updates/s after warm-up."""
    sc = scenario(workers, updates)
    start = time.perf_counter()
    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=numerics.problem.param_bytes)
    metrics = Metrics()
    warm = updates // 10
    engine.until_updates = warm
    drive(engine, numerics, metrics)
    jax.block_until_ready(numerics.params)
    warmed = time.perf_counter()
    engine.until_updates, engine.stopped = updates, ""
    drive(engine, numerics, metrics)
    jax.block_until_ready(numerics.params)
    end = time.perf_counter()
    summary = {"staleness_mean": numerics.staleness_mean(), "compilations": numerics.traces, "final_loss": metrics.last("train_loss"),
               "waves": numerics.waves, "rows_per_wave": numerics.planner.rows_per_wave}
    return updates / (end - start), (updates - warm) / (end - warmed), summary


def _rounded(value: float, digits: int) -> float | None:
    """JSON has no NaN: a comparison that was not run (NaN) is null."""
    return None if np.isnan(value) else round(value, digits)


def targets(rows: list[dict], backend: str) -> list[dict]:
    """Each target of ``backend`` whose worker count was measured: met when the steady ratio
    reaches it; the end-to-end ratios (cold, cached) are reported beside it."""
    wanted = TARGETS.get(backend, {})
    return [{"workers": row["workers"], "updates": row["updates"], "target": wanted[row["workers"]],
             "ratio_steady": row["ratio_steady"], "met": row["ratio_steady"] >= wanted[row["workers"]],
             "ratio_end_to_end": row["ratio_end_to_end"], "ratio_end_to_end_cached": row["ratio_end_to_end_cached"]}
            for row in rows if row["workers"] in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    build_problem(scenario(8, 10), 8)  # the process's one-time costs, outside every timing
    jax.block_until_ready(jnp.ones(1) + 1)
    runs: dict[int, list[tuple[float, ...]]] = {workers: [] for workers in args.workers}
    summaries: dict[int, dict] = {}
    for _ in range(args.repeat):  # repeats interleaved across worker counts: a noisy spell hits both
        for workers in args.workers:
            hand_cold = hand_loop(workers, args.updates)
            sim_cold, sim_steady, summaries[workers] = simulator(workers, args.updates)
            hand_warm = hand_loop_warm(workers, args.updates)
            runs[workers].append((hand_cold, sim_cold, sim_steady, hand_warm))
    # Reruns with the persistent compilation cache on (JAX's setting is process-wide, so after
    # every cold run): the first run of each side fills the cache, the timed ones read it.
    try:  # JAX decides once per process whether a cache is used; this private hook asks again
        from jax._src.compilation_cache import reset_cache
    except ImportError:  # another JAX: the cached comparison is left out (reported as null)
        reset_cache = None
    with tempfile.TemporaryDirectory() as cache:
        if reset_cache is not None:
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            reset_cache()
            for workers in args.workers:
                hand_loop(workers, 200), simulator(workers, 200)
        for i in range(args.repeat):
            for workers in args.workers:
                cached = (hand_loop(workers, args.updates), simulator(workers, args.updates)[0]) if reset_cache else (np.nan, np.nan)
                runs[workers][i] += cached
    rows = []
    for workers in args.workers:
        summary = summaries[workers]
        paired = [(*run, run[1] / run[0], run[2] / run[3], run[5] / run[4]) for run in runs[workers]]
        # Medians; the ratios are medians of the paired (same-repeat) ratios.
        (hand_cold, sim_cold, sim_steady, hand_warm, hand_cached, sim_cached,
         ratio_cold, ratio_steady, ratio_cached) = (float(np.median(c)) for c in zip(*paired))
        rows.append({"workers": workers, "updates": args.updates,
                     "simulate_end_to_end_updates_per_s": round(sim_cold, 1), "hand_loop_cold_updates_per_s": round(hand_cold, 1),
                     "ratio_end_to_end": round(ratio_cold, 3),
                     "simulate_end_to_end_cached_updates_per_s": _rounded(sim_cached, 1),
                     "hand_loop_cached_updates_per_s": _rounded(hand_cached, 1),
                     "ratio_end_to_end_cached": _rounded(ratio_cached, 3),
                     "simulate_steady_updates_per_s": round(sim_steady, 1), "hand_loop_warm_updates_per_s": round(hand_warm, 1),
                     "ratio_steady": round(ratio_steady, 3),
                     "staleness_mean": round(summary["staleness_mean"], 2), "compilations": summary["compilations"],
                     "waves": summary["waves"], "rows_per_wave": summary["rows_per_wave"],
                     "repeats": args.repeat})
    print(json.dumps({"benchmark": "numerics", "device": str(jax.devices()[0]), "jax": jax.__version__,
                      "python": platform.python_version(), "results": rows,
                      "targets": targets(rows, jax.default_backend())}, indent=2))


if __name__ == "__main__":
    main()
