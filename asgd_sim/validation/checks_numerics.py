"""The checks of ``asgd-sim validate`` that run the whole simulator: C1, C3, C4, C5, C9.

Each runs ideal-cluster scenarios through ``simulate`` (schedule and JAX numerics) on quadratic
models, and often ``simulate_timing`` too, and compares a measured value (a critical step, a
fitted momentum, an error floor, a divergence, a number of updates) with a closed form of
`asgd_sim.validation.theory` at the check's parameters. Where the numerics of a run are a simple
fold of its trace (C1's delayed GD, C3's 1-D quadratic), the fold is checked against the engine's
own parameters first, then used for many replications. JAX is imported only when a check runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import theory
from ..trace import APPLIED
from .checks_common import (EXP1, INF, POSITIVE, applied_staleness, flat, growing, quadratic, scenario, simulate_run,
                            timing, update_reads)
from .framework import Check, Params, Recorder

__all__ = ["C1", "C3", "C4", "C5", "C9"]


# --- C1 fixed delay on a quadratic --------------------------------------------------------------

def delayed_gd(eta: float, lams: np.ndarray, tau: int, steps: int) -> np.ndarray:
    """w_{k+1} = w_k - eta A w_{k-tau} (w_j = w_0 = 1 for j < 0) in float64; rows w_0..w_steps."""
    w = np.ones((steps + 1, len(lams)))
    for k in range(steps):
        w[k + 1] = w[k] - eta * lams * w[max(k - tau, 0)]
    return w


def round_robin(M: int, lams: Any, eta: float, updates: int, eval_every: int, max_loss: float = 1e6):
    """M workers, constant compute 1, staggered by 1/M: staleness M-1 on every update after round 1."""
    return simulate_run({"count": M, "compute": 1.0, "stagger": 1.0 / M}, updates=updates,
                        model=quadratic(list(lams), len(lams)), run={"eval_every": eval_every, "max_loss": max_loss},
                        optimizer={"learning_rate": eta})


def unstable_steps(tau: int, lam: float, steps: np.ndarray) -> np.ndarray:
    """One real run tests many steps at once: which of ``steps`` make delay-tau GD blow up?

    M = tau+1 round-robin workers on a diagonal quadratic whose coordinate j has curvature
    steps[j] * lam under the step 1: the coordinates never interact, so coordinate j is delayed GD
    with eta lam = steps[j] lam. The parameters are read after every update for 16 periods of the
    critical mode (2(2 tau + 1) updates each); coordinate j is unstable when its envelope (max |w_j|)
    over the last period exceeds that over the period before the middle. 8 periods apart, a step
    0.5 % above the critical one grows the envelope by ~25 %, and the other modes have died out.
    (One run per step, as plain bisection would need, would compile the step into each run.)
    """
    from ..timing.engine import TimingEngine
    from ..numerics.engine import NumericsEngine
    from ..numerics.stream import Metrics, drive

    period = theory.divergence_period(tau)
    N = 16 * period
    sc = scenario({"count": tau + 1, "compute": 1.0, "stagger": 1.0 / (tau + 1)}, updates=N,
                  model=quadratic((np.asarray(steps) * lam).tolist(), len(steps)), run={"eval_every": 1, "max_loss": INF},
                  optimizer={"learning_rate": 1.0})
    numerics = NumericsEngine(sc)
    windows = {"early": range(N // 2 - period, N // 2), "late": range(N - period + 1, N + 1)}
    envelope = {name: np.zeros(len(steps)) for name in windows}

    def progress(updates: int, now: float) -> None:
        for name, window in windows.items():
            if updates in window:
                envelope[name] = np.fmax(envelope[name], np.abs(flat(numerics.current_params())))

    drive(TimingEngine(sc, param_bytes=numerics.problem.param_bytes), numerics, Metrics(), progress)
    return ~(envelope["late"] <= envelope["early"])  # NaN (overflow) counts as unstable


def search_critical_step(tau: int, lam: float, trials: int, rounds: int, low: float, high: float) -> tuple[float, float, float]:
    """Multisection (bisection with ``trials`` steps per real run) of the stability boundary.

    Each round tests a geometric grid of steps over the bracket and keeps the cell where they turn
    unstable. Returns (estimate, largest stable, smallest unstable); NaN when the boundary is not
    inside the starting bracket (or stability is not monotone in the step).
    """
    for _ in range(rounds):
        steps = np.geomspace(low, high, trials)
        bad = unstable_steps(tau, lam, steps)
        first = int(np.argmax(bad))
        if not bad[-1] or bad[0] or not bad[first:].all():
            return math.nan, low, high
        low, high = float(steps[first - 1]), float(steps[first])
    return math.sqrt(low * high), low, high


def check_c1(p: Params, rec: Recorder) -> None:
    M, lams, N = p["workers"], np.asarray(p["eigenvalues"], float), p["updates"]
    tau, lam_max = M - 1, float(lams.max())
    result = round_robin(M, lams, p["eta"], N, max(1, N // 10))
    stale = result.trace.staleness[result.trace.fate == APPLIED][:N]
    rec.add(f"staleness != min(k, M-1) (count), M={M}", 0, int(np.sum(stale != np.minimum(np.arange(N), tau))), 0, "abs")
    w = delayed_gd(p["eta"], lams, tau, N)
    diff = np.max(np.abs(flat(result.params) - w[N])) / max(1.0, float(np.max(np.abs(w[N]))))
    rec.add(f"max |w - w_delayedGD| / max(1,|w|), M={M}", 0.0, float(diff), 1e-6, "abs")

    critical = theory.critical_step(tau, lam_max)
    horizon = 50 * (2 * M - 1)  # THEORY.md: 10x growth within ~50(2M-1) updates above the limit
    half = theory.divergence_period(tau) // 2
    below = round_robin(M, lams, 0.9 * critical, horizon, half).metrics["train_loss"]
    rec.add(f"loss(end)/loss(0) at 0.9x critical step, M={M}", 0.1, float(below[-1] / below[0]), 0, "max")
    above = round_robin(M, lams, 1.1 * critical, horizon, half).metrics["train_loss"]
    rec.add(f"max loss/loss(0) in 50(2M-1) upd, 1.1x, M={M}", 10.0, float(np.max(above) / above[0]), 0, "min")

    # The search starts from [1 - bracket, 1 + bracket] x the prediction; a boundary outside it
    # gives NaN, a failure. Every verdict inside comes from real runs.
    measured, brackets = [], []
    for t in p["taus"]:
        predicted = theory.critical_step(t, lam_max)
        estimate, low, high = search_critical_step(t, lam_max, p["trials"], p["rounds"], (1 - p["bracket"]) * predicted,
                                                   (1 + p["bracket"]) * predicted)
        measured.append(estimate)
        brackets.append((low, high))
        rec.add(f"critical step (search on real runs), tau={t}", predicted, estimate, p["tolerance"], "rel")
    curve = list(range(max(p["taus"]) + 1))
    rec.figure("critical_step", {"taus": list(p["taus"]), "measured": measured, "brackets": brackets, "lam": lam_max,
                                 "curve_tau": curve, "curve": [theory.critical_step(t, lam_max) for t in curve]})


C1 = Check("C1", "Fixed delay on a quadratic: the exact critical step (Levin & May 1976)", check_c1,
           full={"workers": 4, "eigenvalues": (0.25, 0.5, 1.0), "eta": 0.3, "updates": 150,
                 "taus": tuple(range(16)), "trials": 64, "rounds": 2, "bracket": 0.5, "tolerance": 0.01},
           quick={"taus": (0, 1, 3, 7, 15), "rounds": 1, "tolerance": 0.02},
           limits={"workers": POSITIVE, "updates": (1, "at least one update"), "taus": (0, "delays are >= 0"),
                   "eta": (0.0, "a step"), "trials": (3, "a grid"), "rounds": POSITIVE,
                   "bracket": (0.01, "a relative half-width"), "eigenvalues": (1e-9, "curvatures of a convex quadratic")})


# --- C3 asynchrony begets momentum ----------------------------------------------------------------

def fold_1d(reads: np.ndarray, a: float) -> np.ndarray:
    """w[r, t] of every replication r on f = lam w^2/2 (a = alpha lam), w_0 = 1, in float64."""
    R, T = reads.shape
    w = np.ones((R, T + 1))
    rows = np.arange(R)
    for t in range(T):
        w[:, t + 1] = w[:, t] - a * w[rows, reads[:, t]]
    return w


def fit_momentum(mean: np.ndarray) -> tuple[float, float]:
    """Least squares of mean_{t+1}-mean_t = mu (mean_t-mean_{t-1}) - k mean_t over t >= 1."""
    d = np.diff(mean)
    X = np.stack([d[:-1], -mean[1:-1]], axis=1)
    (mu, k), *_ = np.linalg.lstsq(X, d[1:], rcond=None)
    return float(mu), float(k)


def check_c3(p: Params, rec: Recorder) -> None:
    M, T, a = p["workers"], p["steps"], p["alpha"] * p["lam"]
    model = quadratic([p["lam"]], 1)

    def reads(seed: int, compute: Any, stagger: float = 0.0) -> np.ndarray:
        return update_reads(timing({"count": M, "compute": compute, "stagger": stagger}, updates=T, seed=seed,
                                   model=model).trace, T)

    one = simulate_run({"count": M, "compute": EXP1}, updates=T, seed=p["seed"], model=model,
                       run={"eval_every": 1}, optimizer={"learning_rate": p["alpha"]})
    w_one = fold_1d(update_reads(one.trace, T)[None], a)[0]
    diff = max(abs(float(flat(one.params)[0]) - w_one[-1]),
               float(np.max(np.abs(one.metrics["train_loss"] - 0.5 * p["lam"] * w_one[one.metrics["update"]] ** 2))))
    rec.add("simulate == fold of its own trace, max |d|", 0.0, diff, 1e-6, "abs")

    R = p["replications"]
    w = fold_1d(np.stack([reads(p["seed"] + r, EXP1) for r in range(R)]), a)
    mean = w.mean(axis=0)
    mu, k = fit_momentum(mean)
    rec.add(f"fitted momentum mu, M={M}, R={R}", theory.implicit_momentum(M), mu, 0.02, "abs")
    rec.add(f"fitted step k = alpha lam / M, M={M}", a / M, k, 0.10)
    predicted = theory.momentum_mean_recursion(p["alpha"], p["lam"], M, T, w_prev=1.0 + a)
    stderr = w.std(axis=0, ddof=1) / math.sqrt(R)
    z = np.abs(mean - predicted)[1:] / np.maximum(stderr[1:], 1e-12)
    rec.add("mean iterate vs heavy-ball, max |z-score|", 5.0, float(np.max(z)), 0, "max")

    # Negative control: constant compute staggered by 1/M is a fixed delay M-1 (C1), not momentum.
    control = fold_1d(reads(0, 1.0, 1.0 / M)[None], a)[0]
    rec.add("fixed-delay control unstable (C1 rule)", not theory.delayed_gd_is_stable(p["alpha"], p["lam"], M - 1),
            growing(np.abs(control), theory.divergence_period(M - 1)), 0, "abs")
    rec.figure("momentum", {"t": list(range(T + 1)), "mean": mean.tolist(), "stderr": stderr.tolist(),
                            "heavy_ball": predicted.tolist(), "control": control.tolist(), "M": M, "R": R})


C3 = Check("C3", "Asynchrony begets momentum (Mitliagkas et al. 2016)", check_c3,
           full={"workers": 4, "alpha": 0.5, "lam": 1.0, "steps": 40, "replications": 2000, "seed": 10_000},
           quick={"replications": 500},
           limits={"workers": (2, "asynchrony needs two workers"), "steps": (8, "a fit"), "replications": (20, "a mean")})


# --- C4 Dutta et al. 2018 ---------------------------------------------------------------------------

def check_c4(p: Params, rec: Recorder) -> None:
    P, K, N = p["workers"], p["k"], p["iterations"]
    times = {}
    for variant in theory.DUTTA_VARIANTS:
        predicted = theory.dutta_time_per_iteration(variant, P, K)
        simulated = timing({"count": P, "compute": EXP1}, kind=variant, algorithm={"k": K}, updates=N, seed=p["seed"]).sim_time / N
        times[variant] = (predicted, simulated)
        rec.add(f"time/iteration {variant}, P={P} K={K}, Exp(1)", predicted, simulated, p["tolerance"])
    if p["shift"] > 0:
        compute = {"dist": "shifted_exponential", "shift": p["shift"], "mean": 1.0}
        for variant in ("sync", "k_sync", "k_batch_async"):
            predicted = theory.dutta_time_per_iteration(variant, P, K, shift=p["shift"])
            simulated = timing({"count": P, "compute": compute}, kind=variant, algorithm={"k": K}, updates=N, seed=2).sim_time / N
            rec.add(f"time/iteration {variant}, {p['shift']:g}+Exp(1)", predicted, simulated, p["tolerance"])
    rec.figure("dutta_times", {"variants": list(times), "predicted": [v[0] for v in times.values()],
                               "simulated": [v[1] for v in times.values()], "P": P, "K": K})

    # Error floor: sync with K workers averages K noisy gradients of f = c w^2/2 (noise sigma per
    # coordinate), so the iterate is AR(1); `floor_copies` identical coordinates are independent
    # copies of the 1-D problem, evaluated every 5 updates (lag correlation (1-eta c)^10) after a
    # burn-in of 10/(eta c) updates (the start's excess decays by e^-20).
    eta, c, sigma, copies = p["floor_eta"], p["floor_curvature"], p["floor_sigma"], p["floor_copies"]
    burn_in = math.ceil(10 / (eta * c))
    floors = []
    for k in p["floor_ks"]:
        predicted = theory.dutta_error_floor(eta, c, sigma**2, k)
        result = simulate_run({"count": k, "compute": 1.0}, kind="sync", updates=p["floor_updates"] + burn_in, seed=p["seed"],
                              model=quadratic([c] * copies, copies, sigma), run={"eval_every": 5}, optimizer={"learning_rate": eta})
        loss = result.metrics["train_loss"][result.metrics["update"] >= burn_in]
        floors.append((predicted, float(loss.mean() / copies)))
        rec.add(f"excess-loss floor, sync K={k} (per coordinate)", predicted, floors[-1][1], p["floor_tolerance"])
    rec.figure("error_floor", {"ks": list(p["floor_ks"]), "predicted": [f[0] for f in floors], "simulated": [f[1] for f in floors]})


C4 = Check("C4", "Slow and stale gradients: runtime per iteration and error floor (Dutta et al. 2018)", check_c4,
           full={"workers": 8, "k": 4, "iterations": 20_000, "shift": 1.0, "tolerance": 0.02, "seed": 1,
                 "floor_ks": (1, 2, 4, 8), "floor_eta": 0.5, "floor_curvature": 1.0, "floor_sigma": 1.0,
                 "floor_copies": 256, "floor_updates": 10_000, "floor_tolerance": 0.05},
           quick={"floor_updates": 1500},
           limits={"workers": POSITIVE, "k": POSITIVE, "iterations": (100, "a mean"), "shift": (0.0, "a minimum time"),
                   "floor_ks": POSITIVE, "floor_copies": POSITIVE, "floor_updates": (200, "a stationary mean"),
                   "floor_eta": (1e-9, "a step"), "floor_curvature": (1e-9, "a curvature")})


# --- C5 n-softsync and the staleness-aware step ---------------------------------------------------

def check_c5(p: Params, rec: Recorder) -> None:
    lam, gradients = p["learners"], p["learners"] * p["gradients_per_learner"]
    model = quadratic({"min": 0.25, "max": 1.0}, 16, 0.1)
    lam_max = 1.0

    def softsync(n: int, rule: str | None = None):
        c = theory.softsync_updates_per_gradient(lam, n)  # gradients per update
        updates = gradients // c
        kw = dict(workers={"count": lam, "compute": {"dist": "lognormal", "mean": 1.0, "cv": 0.1}}, kind="k_batch_async",
                  updates=updates, seed=p["seed"], model=model, algorithm={"k": c},
                  run={"eval_every": max(1, updates // 40), "max_loss": 1e3})
        if rule is None:
            return timing(**kw)
        return simulate_run(**kw, optimizer={"learning_rate": p["alpha0"], "staleness_rule": rule})

    for n in p["ns"]:
        rec.add(f"mean staleness {n}-softsync, lambda={lam}", theory.softsync_mean_staleness(lam, n),
                float(applied_staleness(softsync(n).trace).mean()), p["tolerance"])

    def floor(result: Any) -> float:  # the noise floor: mean loss over the second half of the run
        loss = result.metrics["train_loss"]
        return float(np.mean(loss[len(loss) // 2:]))

    hard = softsync(1, "none")
    rec.add(f"hardsync alpha0={p['alpha0']:g}: floor/initial loss", 0.05, floor(hard) / hard.metrics["train_loss"][0], 0, "max")
    for n in p["diverge_ns"]:
        # Prediction: C1's fixed-delay limit at the mean staleness (rounded up).
        tau = math.ceil(theory.softsync_mean_staleness(lam, n))
        rec.add(f"{n}-softsync, fixed alpha0={p['alpha0']:g} diverges", p["alpha0"] * lam_max > theory.critical_step(tau, lam_max),
                bool(softsync(n, "none").diverged), 0, "abs")
        inverse = softsync(n, "inverse")
        rec.add(f"{n}-softsync alpha0/tau: floor / hardsync floor", p["floor_ratio"],
                math.inf if inverse.diverged else floor(inverse) / floor(hard), 0, "max")


C5 = Check("C5", "n-softsync and the staleness-aware step alpha0/tau (Zhang et al. 2016)", check_c5,
           full={"learners": 16, "ns": (1, 2, 4, 16), "gradients_per_learner": 300, "alpha0": 0.8,
                 "diverge_ns": (4, 16), "floor_ratio": 1.5, "tolerance": 0.05, "seed": 3},
           limits={"learners": POSITIVE, "ns": POSITIVE, "diverge_ns": POSITIVE, "gradients_per_learner": (20, "a mean"),
                   "alpha0": (1e-9, "a step")})


# --- C9 delay-adaptive steps ----------------------------------------------------------------------

def check_c9(p: Params, rec: Recorder) -> None:
    n = p["fast_workers"] + 1  # the rule's n: the number of workers
    iterations = {}
    for slowdown in p["slowdowns"]:
        result = simulate_run([{"count": p["fast_workers"], "compute": {"dist": "lognormal", "mean": 1.0, "cv": 0.3}},
                               {"name": "straggler", "count": 1, "compute": {"dist": "lognormal", "mean": slowdown, "cv": 0.3}}],
                              updates=p["updates"], seed=p["seed"], model=quadratic({"min": 0.1, "max": 1.0}, p["dim"]),
                              run={"eval_every": 5}, optimizer={"learning_rate": p["eta"], "staleness_rule": "adaptive"})
        loss = result.metrics["train_loss"]
        below = np.flatnonzero(loss <= p["target"] * loss[0])
        iterations[slowdown] = int(result.metrics["update"][below[0]]) if below.size else math.nan
    base = p["slowdowns"][0]
    for slowdown in p["slowdowns"][1:]:
        rec.add(f"updates to target, straggler {slowdown:g}x / {base:g}x, n={n}", 1.0,
                iterations[slowdown] / iterations[base], p["tolerance"],
                note=", ".join(f"{s:g}x: {i} updates" for s, i in iterations.items()))


C9 = Check("C9", "Delay-adaptive steps ignore a straggler (Mishchenko et al. 2022)", check_c9,
           full={"fast_workers": 7, "slowdowns": (10.0, 100.0), "eta": 0.1, "dim": 8, "updates": 700, "target": 1e-3,
                 "tolerance": 0.10, "seed": 11},
           limits={"fast_workers": POSITIVE, "slowdowns": (1.0, "a slowdown factor"), "dim": POSITIVE, "updates": (10, "a run"),
                   "eta": (1e-9, "a step"), "target": (1e-12, "a loss ratio")})
