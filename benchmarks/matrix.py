"""The benchmark matrix: every workload against the loop a researcher would write for it, in one process.

Sections (``--only`` picks some; each prints ratios, never raw times alone, since this machine is noisy):

- ``algorithms``: every algorithm kind at M = 6 and 64 on the digits MLP 64-256-256-10 (batch 32,
  exponential compute, no network). The simulator (timing + numerics) against a hand loop that
  replays the simulator's own schedule: per update, one jitted value_and_grad per gradient it
  combines at the version its worker read (or the local steps of a push), their weighted
  combination, one jitted optax step. Both compiled before timing; steady-state gradients/s.
- ``restarts``: rounds that restart every worker (Rennala, k = 6) at n = 1,000 and 6,174 with
  tau_i = sqrt(i): seconds for 460 rounds, timing only (issue 14's target: under 2 s at 6,174).
- ``paper``: the Ringmaster paper's experiment (scenarios/papers/ringmaster_quadratic.toml: 3
  methods, n = 6,174, 2,000 s) end to end against the numpy event loop of
  benchmarks/ringmaster_numpy.py.
- ``folder``: a timing-only run of 100,000 updates at M = 1,000 (global lock): writing its run
  folder (Parquet trace, timeline.json, plots, summary) against simulating it, wall and CPU
  seconds, per part (issue 14's target: writing takes no longer than simulating).

    .venv/bin/python benchmarks/matrix.py [--only algorithms,restarts,paper,folder] [--quick]

Prints one JSON object; each target says whether it is met.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (ringmaster_numpy beside this file)

KINDS = {
    "async": {}, "ssp": {"staleness_bound": 3}, "sync": {}, "k_sync": {"k": 3}, "k_async": {"k": 3},
    "k_batch_sync": {"k": 3}, "k_batch_async": {"k": 2}, "rennala": {"k": 4}, "ringmaster": {"delay_threshold": 8},
    "local_sgd": {"local_steps": 2}, "easgd": {"local_steps": 2}, "fedbuff": {"k": 3, "local_steps": 2},
    "fedasync": {"local_steps": 2},
}
TARGETS = {"small": 1.0, "64": 1.3}  # simulator / hand loop, steady gradients/s (issue 14, CPU)


def mlp_scenario(kind: str, workers: int, updates: int):
    from asgd_sim.scenario import scenario_from_dict

    algorithm = {"kind": kind, **KINDS[kind]}
    if kind in ("k_sync", "k_async", "k_batch_sync", "k_batch_async") and algorithm.get("k", 0) > workers:
        algorithm["k"] = workers
    return scenario_from_dict({
        "name": f"bench-{kind}-{workers}",
        "run": {"until_updates": updates, "eval_every": updates},
        "workers": [{"count": workers, "compute": {"dist": "exponential", "mean": 0.05}}],
        "network": {"latency": 0.0, "bandwidth": float("inf"), "server_bandwidth": float("inf")},
        "server": {"apply_time": 0.0, "lock": "none"},
        "algorithm": algorithm,
        "model": {"name": "mlp", "hidden": [256, 256]},
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
    })


def simulator_steady(sc, warm: int) -> tuple[float, object, np.ndarray, float]:
    """The simulator's gradients/s after ``warm`` updates (everything compiled), its trace, its
    final parameters (flat) and its gradients per second of process CPU time."""
    import jax

    from asgd_sim.numerics.engine import NumericsEngine
    from asgd_sim.numerics.stream import Metrics, drive
    from asgd_sim.timing.engine import TimingEngine
    from asgd_sim.trace import APPLIED

    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=numerics.problem.param_bytes)
    metrics, total = Metrics(), sc.run.until_updates
    engine.until_updates = warm
    drive(engine, numerics, metrics)
    jax.block_until_ready(numerics.params)
    before = _applied_gradients(engine.trace, numerics.row)
    start, cpu = time.perf_counter(), time.process_time()
    engine.until_updates, engine.stopped = total, ""
    drive(engine, numerics, metrics)
    jax.block_until_ready(numerics.params)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    trace = engine.trace.freeze({})
    done = _applied_gradients(engine.trace, numerics.row) - before
    return done / seconds, trace, _flat(numerics.current_params()), done / cpu


def _flat(params) -> np.ndarray:
    from jax.flatten_util import ravel_pytree

    return np.asarray(ravel_pytree(params)[0])


def _applied_gradients(tr, rows: int) -> int:
    offsets = np.frombuffer(tr.u_offsets, np.int64)
    return int(offsets[rows])


class HandLoop:
    """The loop a researcher writes for one algorithm, replaying a schedule (see the module docstring)."""

    def __init__(self, sc) -> None:
        import jax
        import optax

        from asgd_sim.algorithms import make_policy
        from asgd_sim.numerics.problems import build_problem

        self.problem = problem = build_problem(sc, sc.num_workers)
        self.params = problem.init(jax.random.PRNGKey(sc.run.seed))
        self.tx = optax.sgd(sc.optimizer.learning_rate)
        self.state = self.tx.init(self.params)
        policy = make_policy(sc)
        self.update, self.steps = policy.model_update, policy.local_steps
        self.lr = sc.optimizer.learning_rate
        self.alpha, self.mixing = sc.algorithm.elastic_alpha, sc.algorithm.mixing
        self.models: dict[int, object] = {}
        self.versions: dict[int, object] = {0: self.params}  # the versions a worker still holds
        self.initial = self.params  # (EASGD: a worker's own model starts there)

        def grad(p, worker, k):
            return jax.grad(problem.loss)(p, problem.make_batch(worker, k))

        def local(p, worker, ks):  # `steps` plain SGD steps from p
            for k in ks:
                p = jax.tree.map(lambda x, g: x - self.lr * g, p, grad(p, worker, k))
            return p

        def step(p, s, g):
            u, s = self.tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self.grad, self.local = jax.jit(grad), jax.jit(local, static_argnums=())
        self.step = jax.jit(step)
        self.axpy = jax.jit(lambda total, w, g: jax.tree.map(lambda a, b: a + w * b, total, g))
        self.mix = jax.jit(lambda x, y, a: jax.tree.map(lambda u, v: (1 - a) * u + a * v, x, y))
        self.zeros = jax.jit(lambda p: jax.tree.map(lambda x: 0 * x, p))

    @staticmethod
    def _last_use(trace) -> dict[int, list[int]]:
        """Row -> the versions last read by a gradient it combines."""
        last: dict[int, int] = {}
        for r in range(trace.num_update_rows):
            gids, _ = trace.members(r)
            for g in gids.tolist():
                last[int(trace.read_version[g, 0])] = r
        by_row: dict[int, list[int]] = {}
        for v, r in last.items():
            by_row.setdefault(r, []).append(v)
        return by_row

    def run(self, trace, rows: range) -> int:
        """Replay update rows; returns the gradients computed."""
        versions, last_use = self.versions, self._last_use(trace)
        params, state, computed = self.params, self.state, 0
        for r in rows:
            gids, weights = trace.members(r)
            if self.update == "gradient":
                total = self.zeros(params)
                for g, w in zip(gids.tolist(), weights.tolist()):
                    total = self.axpy(total, w, self.grad(versions[int(trace.read_version[g, 0])], np.int32(trace.worker[g]),
                                                          np.int32(trace.k[g])))
                    computed += 1
                params, state = self.step(params, state, total)
            else:
                heads = gids[trace.local_step[gids] == 0]
                total = self.zeros(params)
                for h, w in zip(heads.tolist(), weights[trace.local_step[gids] == 0].tolist()):
                    worker = int(trace.worker[h])
                    start = self.models.get(worker, self.initial) if self.update == "elastic" else versions[int(trace.read_version[h, 0])]
                    ks = np.arange(int(trace.k[h]), int(trace.k[h]) + self.steps, dtype=np.int32)
                    final = self.local(start, np.int32(worker), ks)
                    computed += self.steps
                    if self.update == "mix":
                        params = self.mix(params, final, self.mixing)
                    elif self.update == "elastic":
                        diff = self.axpy(self.zeros(params), self.alpha, self.axpy(final, -1.0, params))
                        params, self.models[worker] = self.axpy(params, 1.0, diff), self.axpy(final, -1.0, diff)
                    else:
                        change = self.axpy(start, -1.0, final)
                        total = self.axpy(total, w / (self.lr if self.update == "local_average" else 1.0), change)
                if self.update in ("local_average", "delta"):
                    params, state = self.step(params, state, total)
            versions[int(trace.u_version[r])] = params
            for v in last_use.pop(r, ()):  # no later update reads it: free it, as a researcher would
                versions.pop(v, None)
        import jax

        jax.block_until_ready(params)
        self.params, self.state = params, state
        return computed


def algorithms(quick: bool, kinds: list[str] | None = None, workers_list: tuple[int, ...] = (6, 64),
               updates_override: int | None = None) -> list[dict]:
    """Every kind (or ``kinds``) at each M of ``workers_list``: steady gradients/s of the simulator
    over its hand loop, and how far the hand loop's final parameters are from the simulator's (the
    same computation: float rounding only)."""
    rows = []
    for workers in workers_list:
        for kind in kinds or KINDS:
            updates = (600 if quick else 3000) if kind not in ("sync", "local_sgd") or workers < 64 else (100 if quick else 400)
            updates = updates_override or updates
            warm = updates // 5
            sc = mlp_scenario(kind, workers, updates)
            sim, trace, sim_params, sim_cpu = simulator_steady(sc, warm)
            hand = HandLoop(sc)
            hand.run(trace, range(0, warm))  # compiles every function it uses
            start, cpu = time.perf_counter(), time.process_time()
            computed = hand.run(trace, range(warm, trace.num_update_rows))
            hand_rate, hand_cpu = computed / (time.perf_counter() - start), computed / (time.process_time() - cpu)
            target = TARGETS["64" if workers >= 64 else "small"]
            rows.append({"kind": kind, "workers": workers, "updates": updates, "simulator_gradients_per_s": round(sim),
                         "hand_loop_gradients_per_s": round(hand_rate), "ratio": round(sim / hand_rate, 3), "target": target,
                         "met": bool(sim / hand_rate >= target),
                         # Per second of this process's CPU time: what a loaded machine changes least.
                         "ratio_cpu": round(sim_cpu / hand_cpu, 3),
                         "max_abs_param_diff": float(np.abs(_flat(hand.params) - sim_params).max())})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def restarts(quick: bool) -> list[dict]:
    from asgd_sim.scenario import scenario_from_dict
    from asgd_sim.timing.engine import TimingEngine

    rows = []
    for n in (1000, 6174):
        rounds = 46 if quick else 460
        sc = scenario_from_dict({"workers": [{"count": n, "compute": {"dist": "constant", "value": "sqrt(i + 1)"}}],
                                 "run": {"until_updates": rounds}, "algorithm": {"kind": "rennala", "k": 6},
                                 "network": {"latency": 0.0, "bandwidth": float("inf"), "server_bandwidth": float("inf")},
                                 "server": {"apply_time": 0.0}, "model": {"param_bytes": 1.0}}, name=f"restarts-{n}")
        start, cpu = time.perf_counter(), time.process_time()
        result = TimingEngine(sc).run()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append({"workers": n, "rounds": rounds, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                     "restarts": int(result.trace.num_gradients),
                     "us_per_restart": round(1e6 * seconds / result.trace.num_gradients, 2),
                     "target_s": 2.0 * rounds / 460 if n == 6174 else None,
                     "met": bool(seconds <= 2.0 * rounds / 460) if n == 6174 else None})
    return rows


def paper(quick: bool, horizon: float | None = None) -> dict:
    import ringmaster_numpy

    from asgd_sim.runner import simulate

    horizon = horizon or (200.0 if quick else 2000.0)
    # The process's one-time costs (importing JAX and the engines, starting JAX's CPU client) are
    # paid before timing, as the numpy loop's (importing numpy) are: what is timed is the run.
    import jax

    import asgd_sim.numerics.engine  # noqa: F401
    import asgd_sim.numerics.stream  # noqa: F401

    jax.block_until_ready(jax.numpy.zeros(1) + 1)
    variants = {
        "ringmaster": [],
        "rennala": ["algorithm.kind=rennala", "algorithm.k=6", "algorithm.stops=false", "optimizer.learning_rate=1.0", "run.eval_every=2"],
        "asgd": ["algorithm.kind=async", "algorithm.stops=false", "optimizer.learning_rate=0.00032", "optimizer.staleness_rule=adaptive",
                 "run.eval_every=2000"],
    }
    sim_s, hand_s, sim_cpu, hand_cpu, rows = 0.0, 0.0, 0.0, 0.0, {}
    for method, overrides in variants.items():
        start, cpu = time.perf_counter(), time.process_time()
        result = simulate("scenarios/papers/ringmaster_quadratic.toml", [f"run.until_time={horizon}", *overrides])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        hand_start = time.process_time()
        # (the loop records |grad f|^2 as often as the simulator evaluates: the same curve)
        every = next((int(o.split("=")[1]) for o in overrides if o.startswith("run.eval_every=")), 50)
        hand = ringmaster_numpy.run(method, 6174, horizon=horizon, record_every=every)
        hand_cpu_s = time.process_time() - hand_start
        sim_s, hand_s, sim_cpu, hand_cpu = sim_s + seconds, hand_s + hand["wall_s"], sim_cpu + cpu, hand_cpu + hand_cpu_s
        rows[method] = {"simulator_s": round(seconds, 2), "numpy_loop_s": round(hand["wall_s"], 2),
                        "simulator_cpu_s": round(cpu, 2), "numpy_loop_cpu_s": round(hand_cpu_s, 2),
                        "simulator_updates": int(result.summary["updates"]), "numpy_updates": hand["updates"]}
    return {"horizon_s": horizon, "methods": rows, "simulator_s": round(sim_s, 2), "numpy_loop_s": round(hand_s, 2),
            "ratio": round(hand_s / sim_s, 3), "ratio_cpu": round(hand_cpu / sim_cpu, 3), "met": bool(sim_s <= hand_s)}


def folder(quick: bool) -> dict:
    """Writing a run folder against simulating the run, in one process: wall and CPU seconds (on a
    shared machine wall time counts other processes' load too; CPU time of this process does not,
    but sums both of the writer's threads). The first write pays the imports of Parquet and
    matplotlib, as every ``asgd-sim run`` does; the second is a sweep's steady state."""
    from asgd_sim.results.folder import write_run
    from asgd_sim.runner import run_timing
    from asgd_sim.scenario import scenario_from_dict

    updates = 10_000 if quick else 100_000
    sc = scenario_from_dict({"workers": [{"count": 1000, "compute": {"dist": "exponential", "mean": 1.0}}],
                             "run": {"until_updates": updates}, "server": {"lock": "global", "apply_time": 0.0005}},
                            name="folder")
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_timing(sc)
    simulated, simulated_cpu = time.perf_counter() - wall, time.process_time() - cpu
    writes = []
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in ("first", "second"):
            wall, cpu = time.perf_counter(), time.process_time()
            parts = write_run(result, Path(tmp) / attempt)
            written, written_cpu = time.perf_counter() - wall, time.process_time() - cpu
            files = {p.name: p.stat().st_size for p in (Path(tmp) / attempt).iterdir()}
            writes.append({"write": attempt, "wall_s": round(written, 2), "cpu_s": round(written_cpu, 2),
                           "ratio_wall": round(written / simulated, 3), "ratio_cpu": round(written_cpu / simulated_cpu, 3),
                           "parts_wall_s": {k: round(v, 2) for k, v in parts.items()},
                           "folder_mb": round(sum(files.values()) / 2**20, 1), "timeline_mb": round(files["timeline.json"] / 2**20, 1)})
    first = writes[0]
    return {"updates": updates, "workers": 1000, "gradients": result.trace.num_gradients, "simulate_wall_s": round(simulated, 2),
            "simulate_cpu_s": round(simulated_cpu, 2), "writes": writes,
            "met": bool(first["wall_s"] <= simulated and first["cpu_s"] <= simulated_cpu)}


def _device() -> str:
    import jax

    return str(jax.devices()[0].device_kind if jax.default_backend() != "cpu" else "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="algorithms,restarts,paper,folder")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--kinds", help=f"algorithms: these kinds only (comma-separated; default all: {','.join(KINDS)})")
    parser.add_argument("--workers", help="algorithms: these M (comma-separated; default 6,64)")
    parser.add_argument("--updates", type=int, help="algorithms: updates per run (default 3,000; 600 with --quick)")
    parser.add_argument("--horizon", type=float, help="paper: simulated seconds (default 2,000; 200 with --quick)")
    args = parser.parse_args()
    kinds = args.kinds.split(",") if args.kinds else None
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; choose from {', '.join(KINDS)}")
    sections = {
        "algorithms": lambda quick: algorithms(quick, kinds, tuple(int(m) for m in args.workers.split(",")) if args.workers else (6, 64),
                                               args.updates),
        "restarts": restarts, "paper": lambda quick: paper(quick, args.horizon), "folder": folder,
    }
    out = {"benchmark": "matrix", "python": platform.python_version(), "device": _device(), "quick": args.quick}
    for name in args.only.split(","):
        if name.strip() not in sections:
            parser.error(f"--only: unknown section {name.strip()!r}; choose from {', '.join(sections)}")
        out[name.strip()] = sections[name.strip()](args.quick)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
