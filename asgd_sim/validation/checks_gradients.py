"""The checks of ``asgd-sim validate`` that recompute gradients with JAX by hand: C6, C11.

C6 folds plain ASGD over a run's schedule with ``jax.grad`` to get the fresh gradient the engine
never computes, and compares DC-ASGD's compensated gradients with it; C11 checks EASGD's
conservation law against the noise of every local step, local SGD against minibatch SGD, and the
client-drift fixed point of local SGD with a user model (`drift_model`, `drift_data`). JAX is
imported only when a check runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import theory
from ..errors import ScenarioError
from .checks_common import EXP1, POSITIVE, flat, quadratic, scenario, simulate_run
from .framework import Check, Params, Recorder

__all__ = ["C6", "C11", "drift_model", "drift_data"]


# --- C6 DC-ASGD ---------------------------------------------------------------------------------------

def check_c6(p: Params, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from ..numerics.problems import build_problem
    from ..runner import simulate

    M, N, lr = p["workers"], p["updates"], p["lr"]
    logreg = {"name": "logreg"}
    sc = scenario({"count": M, "compute": EXP1}, updates=N, seed=p["seed"], model=logreg, data={"name": "digits"},
                  optimizer={"learning_rate": lr})
    result = simulate(sc)
    problem = build_problem(sc, M)
    w0, unravel = ravel_pytree(problem.init(jax.random.PRNGKey(sc.run.seed)))
    grad = jax.jit(lambda w, worker, k: ravel_pytree(jax.grad(problem.loss)(unravel(w), problem.make_batch(worker, k)))[0])
    tr = result.trace
    gid = tr.member_gid[tr.member_offsets[:N]]
    reads, workers, ks = tr.read_version[gid, 0], tr.worker[gid], tr.k[gid]
    # Plain ASGD by hand over the run's schedule: W[t] is version t, G[t] the gradient update t applied.
    W = np.zeros((N + 1, w0.size), np.float32)
    W[0] = np.asarray(w0)
    G = np.zeros((N, w0.size), np.float32)
    for t in range(N):
        G[t] = np.asarray(grad(W[reads[t]], jnp.int32(workers[t]), jnp.int32(ks[t])))
        W[t + 1] = W[t] - lr * G[t]
    rec.add("fold of ASGD schedule == simulate, max |dw|", 0.0, float(np.max(np.abs(W[N] - flat(result.params)))), 1e-5, "abs")
    fresh = np.stack([np.asarray(grad(W[t], jnp.int32(workers[t]), jnp.int32(ks[t]))) for t in range(N)])
    stale = (np.arange(N) - reads) > 0
    error_stale = np.linalg.norm(G - fresh, axis=1)[stale]
    fixed = np.stack([theory.dc_asgd_compensated(G[t], W[t], W[reads[t]], p["lam"]) for t in range(N)])
    mean_square, adaptive = np.zeros((M, w0.size)), np.zeros_like(fixed)
    for t in range(N):  # DC-ASGD-a: an EMA (rate 0.95) of g*g per worker, updated before use
        mean_square[workers[t]] = 0.95 * mean_square[workers[t]] + 0.05 * G[t].astype(float) ** 2
        lam_t = theory.dc_asgd_adaptive_lambda(p["lam0"], mean_square[workers[t]])
        adaptive[t] = theory.dc_asgd_compensated(G[t], W[t], W[reads[t]], lam_t)
    for label, compensated in ((f"lambda={p['lam']:g}", fixed), (f"DC-a lambda0={p['lam0']:g}", adaptive)):
        error = np.linalg.norm(compensated - fresh, axis=1)[stale]
        rec.add(f"dc/stale grad error (vs fresh), {label}", 1.0, float(error.mean() / error_stale.mean()), 0, "max",
                note=f"mean |g_dc - g_fresh| / mean |g_stale - g_fresh|; the compensated gradient is closer on "
                     f"{np.mean(error < error_stale):.1%} of the {stale.sum()} stale updates")

    # Ordering on an async MLP: common random numbers (each seed: same schedule and batches).
    variants = {"ASGD": {}, "DC-ASGD": {"dc_lambda": p["dc_lambda"]},
                "DC-ASGD-a": {"dc_lambda": p["dc_adaptive_lambda"], "dc_adaptive": True}}
    orderings = {}
    for workers_count in p["mlp_workers"]:
        losses: dict[str, list[float]] = {name: [] for name in variants}
        for seed in range(p["seeds"]):
            for name, options in variants.items():
                run = simulate_run({"count": workers_count, "compute": EXP1}, updates=p["mlp_updates"], seed=seed,
                                   model={"name": "mlp", "hidden": [32]}, data={"name": "digits"},
                                   optimizer={"learning_rate": p["mlp_lr"], **options})
                losses[name].append(run.summary["final_loss"] if run.summary["final_loss"] is not None else math.inf)
        means = {name: float(np.mean(v)) for name, v in losses.items()}
        ordering = " < ".join(sorted(means, key=means.get))
        orderings[str(workers_count)] = {"means": means, "ordering": ordering}
        for name in ("DC-ASGD", "DC-ASGD-a"):  # THEORY.md: report only the ordering
            rec.add(f"MLP final loss {name}/ASGD, M={workers_count}, {p['seeds']} seeds", 1.0,
                    means[name] / means["ASGD"], 0, "info", note=f"M={workers_count}, lowest final loss first: {ordering}")
    rec.figure("dc_ordering", orderings)


C6 = Check("C6", "DC-ASGD: delay compensation (Zheng et al. 2017)", check_c6,
           full={"workers": 8, "updates": 300, "lr": 0.1, "lam": 2.0, "lam0": 1.0, "seed": 1,
                 "mlp_workers": (4, 8, 16), "seeds": 5, "mlp_updates": 400, "mlp_lr": 0.3, "dc_lambda": 0.04,
                 "dc_adaptive_lambda": 2.0},
           quick={"seeds": 2, "mlp_workers": (8,)},
           limits={"workers": (2, "staleness needs two workers"), "updates": (10, "a mean"), "seeds": POSITIVE,
                   "mlp_workers": POSITIVE, "mlp_updates": POSITIVE})


# --- C11 EASGD and local SGD -------------------------------------------------------------------------

DRIFT_ROWS = 64


def drift_model(lams: list[float], cs: list[float], seed: int) -> tuple[Any, Any]:
    """Worker i's objective f_i = lam_i (w - c_i)^2 / 2 (docs/THEORY.md C11, client drift).

    A user model for the scenario, loaded by name (``model.name = f"{__name__}:drift_model"``):
    each training row of `drift_data` is a row index; the rows are dealt out to workers as the
    simulator deals them (`partition_indices`, "iid", with the run seed's partition stream), so the
    row says whose (lam, c) it carries.
    """
    import jax.numpy as jnp

    from ..numerics.data import data_rng, partition_indices

    parts = partition_indices(np.zeros(DRIFT_ROWS, np.int32), len(lams), "iid", 0.5, data_rng(seed, "partition"))
    lam_row, c_row = np.zeros(DRIFT_ROWS, np.float32), np.zeros(DRIFT_ROWS, np.float32)
    for worker, rows in enumerate(parts):
        lam_row[rows], c_row[rows] = lams[worker], cs[worker]
    lam_row, c_row = jnp.asarray(lam_row), jnp.asarray(c_row)

    def init(key: Any) -> Any:
        return jnp.zeros((), jnp.float32)

    def loss(w: Any, batch: Any) -> Any:
        rows = batch["x"][:, 0].astype(jnp.int32)
        return jnp.mean(0.5 * lam_row[rows] * (w - c_row[rows]) ** 2)

    return init, loss


def drift_data() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = np.arange(DRIFT_ROWS, dtype=np.float32)[:, None]
    y = np.zeros(DRIFT_ROWS, np.float32)
    return {"x": x, "y": y}, {"x": x[:4], "y": y[:4]}


def _drift_owner(workers: int, seed: int) -> np.ndarray:
    """Which worker each drift row belongs to (as the simulator deals them)."""
    from ..numerics.data import data_rng, partition_indices

    owner = np.zeros(DRIFT_ROWS, int)
    for worker, rows in enumerate(partition_indices(np.zeros(DRIFT_ROWS, np.int32), workers, "iid", 0.5, data_rng(seed, "partition"))):
        owner[rows] = worker
    return owner


def check_c11(p: Params, rec: Recorder) -> None:
    import jax
    import jax.numpy as jnp

    from ..timing.engine import TimingEngine
    from ..numerics.engine import NumericsEngine
    from ..numerics.stream import Metrics, drive

    # EASGD exchanges conserve sum_i x_i + x_center: on a flat quadratic (curvature 1e-12) with
    # gradient noise, the sum must equal (M+1) x0 - lr * (the noise of every local step applied).
    M, lr = p["workers"], p["lr"]
    sc = scenario({"count": M, "compute": EXP1}, updates=p["updates"], seed=p["seed"], kind="easgd",
                  model=quadratic([1e-12] * 6, 6, 1.0), algorithm={"local_steps": p["local_steps"], "elastic_alpha": p["alpha"]},
                  run={"eval_every": 40}, optimizer={"learning_rate": lr})
    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=numerics.problem.param_bytes)
    drive(engine, numerics, Metrics())
    tr = engine.trace.freeze()
    used = tr.member_gid[: tr.member_offsets[numerics.row]]
    noise = jax.vmap(numerics.problem.make_batch)(jnp.asarray(tr.worker[used], jnp.int32), jnp.asarray(tr.k[used], jnp.int32))
    x0 = flat(numerics.problem.init(jax.random.PRNGKey(sc.run.seed))).astype(np.float64)
    expected = (M + 1) * x0 - lr * np.asarray(noise, np.float64).sum(axis=0)
    size = numerics.P
    total = (np.asarray(numerics.local.models, np.float64).reshape(M, -1)[:, :size].sum(axis=0)
             + np.asarray(numerics.params, np.float64).reshape(-1)[:size])
    rec.add("EASGD: sum x_i + center vs accounting, max|d|", 0.0, float(np.max(np.abs(total - expected))), 1e-5, "abs",
            note=f"{len(used)} local steps, {p['updates']} exchanges")

    # Local SGD with H = 1 is minibatch SGD (sync): the same gradients at the same versions.
    runs = {kind: simulate_run({"count": M, "compute": EXP1}, kind=kind, updates=60, seed=4,
                               model=quadratic({"min": 0.2, "max": 1.0}, 6, 0.3), algorithm={"local_steps": 1},
                               run={"eval_every": 20}, optimizer={"learning_rate": 0.3}) for kind in ("local_sgd", "sync")}
    a, b = (flat(runs[k].params).astype(np.float64) for k in ("local_sgd", "sync"))
    rec.add("local SGD H=1 vs minibatch SGD, rel. diff", 0.0, float(np.linalg.norm(a - b) / np.linalg.norm(b)), 1e-5, "abs")

    # Client drift: H local GD steps on f_i, then averaging, settle at sum c_i(1-a_i)/sum(1-a_i).
    lams, cs = list(p["lams"]), list(p["cs"])
    if len(cs) != len(lams):
        raise ScenarioError("C11.cs", f"has {len(cs)} values: give one per entry of lams ({len(lams)})")
    fixed_point = theory.local_sgd_drift_fixed_point(lams, cs, p["drift_eta"], p["drift_steps"])
    sc = scenario({"count": len(lams), "compute": EXP1}, kind="local_sgd", updates=p["rounds"], seed=1,
                  model={"name": f"{__name__}:drift_model", "options": {"lams": lams, "cs": cs, "seed": 1}},
                  data={"factory": f"{__name__}:drift_data", "batch_size": 4},
                  algorithm={"local_steps": p["drift_steps"]}, run={"eval_every": p["rounds"]},
                  optimizer={"learning_rate": p["drift_eta"]})
    from ..numerics.problems import build_problem
    from ..runner import simulate

    problem, owner = build_problem(sc, len(lams)), _drift_owner(len(lams), 1)
    foreign = sum(int(np.sum(owner[np.asarray(problem.make_batch(jnp.int32(w), jnp.int32(k))["x"])[:, 0].astype(int)] != w))
                  for w in range(len(lams)) for k in range(3))
    rec.add("drift: rows of other workers in worker batches", 0, foreign, 0, "abs")
    w = float(flat(simulate(sc).params)[0])
    optimum = float(np.dot(lams, cs) / np.sum(lams))
    rec.add(f"local SGD H={p['drift_steps']} fixed point (client drift)", fixed_point, w, 1e-5, "abs",
            note=f"the optimum is {optimum:.4g}: drift moves the fixed point by {fixed_point - optimum:+.4g}")


C11 = Check("C11", "EASGD conservation, local SGD, client drift (Zhang et al. 2015)", check_c11,
            full={"workers": 4, "alpha": 0.3, "lr": 0.1, "local_steps": 3, "updates": 120, "seed": 2,
                  "lams": (0.25, 0.5, 1.0, 2.0), "cs": (-2.0, -1.0, 1.0, 2.0), "drift_eta": 0.2, "drift_steps": 5, "rounds": 40},
            limits={"workers": POSITIVE, "local_steps": POSITIVE, "drift_steps": POSITIVE, "updates": POSITIVE,
                    "rounds": POSITIVE, "lams": (1e-9, "curvatures")})
