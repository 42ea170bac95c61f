"""The checks of ``asgd-sim validate``: THEORY.md C1-C12 through the real simulator.

Every check builds Scenario objects (`scenario_from_dict`), runs them with ``simulate_timing``
(schedule only) or ``simulate`` (schedule and JAX numerics), and compares a measured value with a
closed form from ``asgd_sim.theory`` evaluated at the check's parameters. Scenarios run on the
ideal cluster of the theory (zero latency, infinite bandwidth, zero apply time) unless the check is
about the server itself. Sample sizes (the ``full`` defaults are THEORY.md's) keep the
statistical error a fraction of each tolerance; ``quick`` ones keep it below the tolerance.

Where the numerics of a run are a simple fold of its trace (C3's 1-D quadratic, C6's SGD), the
fold is checked against the engine's own parameters first, then used for many replications or
for quantities the engine does not expose (the fresh gradient of C6).
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np

from . import theory
from ..timing.engine import simulate_timing
from ..errors import ScenarioError
from ..scenario.files import scenario_from_dict
from ..results.summary import summarize_trace
from ..trace import APPLIED, PENDING
from .framework import Params, Recorder, register

INF = math.inf
EXP1 = {"dist": "exponential", "mean": 1.0}
POSITIVE = (1, "at least one")


def scenario(workers: list[dict[str, Any]] | dict[str, Any], *, updates: int, seed: int = 0, kind: str = "async",
             model: dict[str, Any] | None = None, **sections: Any):
    """An ideal-cluster scenario. ``model`` defaults to a 1-D quadratic (irrelevant to timing)."""
    data: dict[str, Any] = {
        "run": {"until_updates": updates, "seed": seed, "eval_every": max(1, updates), "max_loss": 1e6},
        # Unnamed groups are called g0, g1, ... (group names must differ).
        "workers": [{"name": f"g{i}", **g} for i, g in enumerate(workers if isinstance(workers, list) else [workers])],
        "network": {"latency": 0.0, "bandwidth": INF, "server_bandwidth": INF},
        "server": {"apply_time": 0.0},
        "algorithm": {"kind": kind},
        "model": model or {"name": "quadratic", "dim": 1, "eigenvalues": [1.0]},
        "data": {"name": "none"},
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return scenario_from_dict(data, name="validate")


def quadratic(eigenvalues: Any, dim: int, noise: float = 0.0) -> dict[str, Any]:
    return {"name": "quadratic", "dim": dim, "eigenvalues": eigenvalues, "noise": noise}


def timing(*args: Any, **kwargs: Any):
    return simulate_timing(scenario(*args, **kwargs))


def simulate_run(*args: Any, **kwargs: Any):
    from ..runner import simulate  # imports JAX: only the numerics checks pay for it

    return simulate(scenario(*args, **kwargs))


def applied_staleness(trace: Any) -> np.ndarray:
    return trace.staleness[trace.fate == APPLIED]


def update_reads(trace: Any, T: int) -> np.ndarray:
    """The version read by the gradient of each of the first T updates (one gradient per update)."""
    if trace.num_update_rows < T or not np.all(np.diff(trace.member_offsets[: T + 1]) == 1):
        raise RuntimeError("expected one gradient per update")
    return trace.read_version[trace.member_gid[trace.member_offsets[:T]], 0]


def flat(params: Any) -> np.ndarray:
    from jax.flatten_util import ravel_pytree

    return np.asarray(ravel_pytree(params)[0])


def growing(values: np.ndarray, window: int) -> bool:
    """Whether a sequence's envelope grows: max over its last `window` vs the window before its middle."""
    n = len(values)
    middle = n // 2
    early, late = values[max(0, middle - window): middle], values[max(0, n - window):]
    return bool(np.max(late) > np.max(early))


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


@register("C1", "Fixed delay on a quadratic: the exact critical step (Levin & May 1976)",
          full={"workers": 4, "eigenvalues": (0.25, 0.5, 1.0), "eta": 0.3, "updates": 150,
                "taus": tuple(range(16)), "trials": 64, "rounds": 2, "bracket": 0.5, "tolerance": 0.01},
          quick={"taus": (0, 1, 3, 7, 15), "rounds": 1, "tolerance": 0.02},
          limits={"workers": POSITIVE, "updates": (1, "at least one update"), "taus": (0, "delays are >= 0"),
                  "eta": (0.0, "a step"), "trials": (3, "a grid"), "rounds": POSITIVE,
                  "bracket": (0.01, "a relative half-width"), "eigenvalues": (1e-9, "curvatures of a convex quadratic")})
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


# --- C2 staleness distribution in a parameter server ---------------------------------------------

LITTLE_DISTRIBUTIONS = {
    "exponential": EXP1,
    "lognormal cv 1.5": {"dist": "lognormal", "mean": 1.0, "cv": 1.5},
    "pareto alpha 1.5": {"dist": "pareto", "scale": 1.0, "alpha": 1.5},
    "uniform": {"dist": "uniform", "low": 0.5, "high": 1.5},
    "constant": 1.0,
}


@register("C2", "Staleness distribution in a parameter server",
          full={"workers": (4, 8, 16), "updates": 100_000, "little_workers": 8, "little_updates": 3000,
                "means": (0.5, 1.0, 1.0, 2.0, 4.0), "means_updates": 300_000,
                "shifted_b": (0.2, 1.0), "shifted_workers": (2, 4, 8, 16), "shifted_updates": 150_000, "seed": 11},
          quick={"means_updates": 150_000, "shifted_workers": (4, 16), "shifted_updates": 100_000},
          limits={"workers": (2, "staleness needs two workers"), "little_workers": POSITIVE, "updates": (1000, "a histogram"),
                  "little_updates": POSITIVE, "means_updates": (1000, "a histogram"), "shifted_updates": (1000, "a variance")})
def check_c2(p: Params, rec: Recorder) -> None:
    M, N = p["little_workers"], p["little_updates"]
    for label, compute in LITTLE_DISTRIBUTIONS.items():
        tr = timing({"count": M, "compute": compute}, updates=N, seed=p["seed"]).trace
        in_flight = tr.fate == PENDING
        lhs, rhs = theory.little_identity_lhs_rhs(applied_staleness(tr), tr.read_version[in_flight, 0], M, N)
        rec.add(f"Little identity (= M N), {label}", rhs, lhs, 0, "abs")

    tr = timing({"count": M, "compute": 1.0, "stagger": 1.0 / M}, updates=20 * M).trace
    late = np.unique(applied_staleness(tr)[M:])
    rec.add(f"tau after round 1, constant staggered, M={M}", theory.async_staleness_mean(M),
            float(late[0]) if late.size == 1 else math.nan, 0, "abs")

    histograms = {}
    for M in p["workers"]:
        tau = applied_staleness(timing({"count": M, "compute": EXP1}, updates=p["updates"], seed=p["seed"]).trace)
        rec.add(f"mean staleness, exponential M={M}", theory.async_staleness_mean(M), float(tau.mean()), 0.005)
        rec.add(f"var staleness (Geometric(1/M)), M={M}", theory.geometric_staleness_var(M), float(tau.var()), 0.03)
        rec.add(f"P(tau = 0), M={M}", 1.0 / M, float(np.mean(tau == 0)), 0.03)
        kmax = 40 * M
        pmf = theory.geometric_staleness_pmf(M, kmax)
        empirical = np.bincount(np.minimum(tau, kmax + 1), minlength=kmax + 2) / tau.size
        tv = 0.5 * (np.abs(empirical[:-1] - pmf).sum() + abs(empirical[-1] - (1.0 - pmf.sum())))
        rec.add(f"total variation to Geometric(1/M), M={M}", 0.015, float(tv), 0, "max")
        top = int(np.quantile(tau, 0.995)) + 1
        histograms[str(M)] = {"k": list(range(top)), "empirical": empirical[:top].tolist(), "geometric": pmf[:top].tolist()}
    rec.figure("staleness_histograms", histograms)

    means = list(p["means"])
    tr = timing([{"count": 1, "compute": {"dist": "exponential", "mean": m}} for m in means],
                updates=p["means_updates"], seed=5).trace
    applied = tr.fate == APPLIED
    for w, expected in enumerate(theory.per_worker_staleness_mean(means)):
        rec.add(f"E[tau_i], worker {w} of mean {means[w]:g}", float(expected),
                float(tr.staleness[applied & (tr.worker == w)].mean()), 0.05)

    for b, M in product(p["shifted_b"], p["shifted_workers"]):
        reference = theory.SHIFTED_EXP_STALENESS_VAR_REFERENCE.get((float(b), int(M)))
        if reference is None:
            raise ScenarioError("C2.shifted_b/shifted_workers", f"no reference variance for b = {b}, M = {M}; THEORY.md "
                                f"tabulates {sorted(theory.SHIFTED_EXP_STALENESS_VAR_REFERENCE)}")
        compute = {"dist": "shifted_exponential", "shift": theory.SHIFTED_EXP_STALENESS_VAR_SHIFT, "mean": b}
        tau = applied_staleness(timing({"count": M, "compute": compute}, updates=p["shifted_updates"], seed=3).trace)
        rec.add(f"var staleness, 1+Exp(mean {b:g}), M={M} (ref.)", reference, float(tau.var()),
                theory.SHIFTED_EXP_STALENESS_VAR_RTOL)


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


@register("C3", "Asynchrony begets momentum (Mitliagkas et al. 2016)",
          full={"workers": 4, "alpha": 0.5, "lam": 1.0, "steps": 40, "replications": 2000, "seed": 10_000},
          quick={"replications": 500},
          limits={"workers": (2, "asynchrony needs two workers"), "steps": (8, "a fit"), "replications": (20, "a mean")})
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


# --- C4 Dutta et al. 2018 ---------------------------------------------------------------------------

@register("C4", "Slow and stale gradients: runtime per iteration and error floor (Dutta et al. 2018)",
          full={"workers": 8, "k": 4, "iterations": 20_000, "shift": 1.0, "tolerance": 0.02, "seed": 1,
                "floor_ks": (1, 2, 4, 8), "floor_eta": 0.5, "floor_curvature": 1.0, "floor_sigma": 1.0,
                "floor_copies": 256, "floor_updates": 10_000, "floor_tolerance": 0.05},
          quick={"floor_updates": 1500},
          limits={"workers": POSITIVE, "k": POSITIVE, "iterations": (100, "a mean"), "shift": (0.0, "a minimum time"),
                  "floor_ks": POSITIVE, "floor_copies": POSITIVE, "floor_updates": (200, "a stationary mean"),
                  "floor_eta": (1e-9, "a step"), "floor_curvature": (1e-9, "a curvature")})
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


# --- C5 n-softsync and the staleness-aware step ---------------------------------------------------

@register("C5", "n-softsync and the staleness-aware step alpha0/tau (Zhang et al. 2016)",
          full={"learners": 16, "ns": (1, 2, 4, 16), "gradients_per_learner": 300, "alpha0": 0.8,
                "diverge_ns": (4, 16), "floor_ratio": 1.5, "tolerance": 0.05, "seed": 3},
          limits={"learners": POSITIVE, "ns": POSITIVE, "diverge_ns": POSITIVE, "gradients_per_learner": (20, "a mean"),
                  "alpha0": (1e-9, "a step")})
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


# --- C6 DC-ASGD ---------------------------------------------------------------------------------------

@register("C6", "DC-ASGD: delay compensation (Zheng et al. 2017)",
          full={"workers": 8, "updates": 300, "lr": 0.1, "lam": 2.0, "lam0": 1.0, "seed": 1,
                "mlp_workers": (4, 8, 16), "seeds": 5, "mlp_updates": 400, "mlp_lr": 0.3, "dc_lambda": 0.04,
                "dc_adaptive_lambda": 2.0},
          quick={"seeds": 2, "mlp_workers": (8,)},
          limits={"workers": (2, "staleness needs two workers"), "updates": (10, "a mean"), "seeds": POSITIVE,
                  "mlp_workers": POSITIVE, "mlp_updates": POSITIVE})
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


# --- C7 classical async convergence: delays are asymptotically negligible ----------------------------

def fold_averaged_sgd(lag: np.ndarray, T: int, R: int, seed: int, sigma: float) -> np.ndarray:
    """Excess loss of the averaged iterate of delayed SGD on f = w^2/2, per replication.

    w_{t+1} = w_t - eta_t (w_{t - lag_t} + sigma xi_t), eta_t = 0.5/sqrt(t+1), w_0 = 0 (the
    optimum: what remains is the noise's excess), averaged iterate mean(w_1..w_T). The noise xi is
    drawn from ``seed`` alone, so a delayed and an undelayed fold share it (common random numbers).
    """
    rng = np.random.default_rng(seed)
    depth = int(lag[:T].max()) + 1
    ring = np.zeros((depth, R))
    w, total = np.zeros(R), np.zeros(R)
    for t in range(T):
        ring[t % depth] = w
        w = w - 0.5 / math.sqrt(t + 1) * (ring[(t - lag[t]) % depth] + sigma * rng.standard_normal(R))
        total += w
    return 0.5 * (total / T) ** 2


@register("C7", "Classical async convergence: delays are asymptotically negligible (Agarwal & Duchi 2011)",
          full={"tau": 8, "short": 300, "long": 30_000, "replications": 4000, "sigma": 1.0, "seed": 7},
          quick={"long": 10_000, "replications": 2000},
          limits={"tau": (1, "a delay"), "short": (10, "a run"), "replications": (100, "a mean")})
def check_c7(p: Params, rec: Recorder) -> None:
    tau, short, long = p["tau"], p["short"], p["long"]
    if long <= short:
        raise ScenarioError("C7.long", f"= {long}: must be > C7.short ({short}); the ratio is compared at both lengths")
    # The schedule is the real engine's: tau+1 staggered constant-time workers give staleness tau
    # on every update after the first round (C1). The 1/sqrt(t) step with iterate averaging is not
    # a server rule, so the iterates are folded in numpy over the schedule's read versions.
    reads = update_reads(timing({"count": tau + 1, "compute": 1.0, "stagger": 1.0 / (tau + 1)}, updates=long).trace, long)
    lag = np.arange(long) - reads
    rec.add(f"schedule: staleness tau={tau} after round 1", tau, int(np.min(lag[tau:])) if np.all(lag[tau:] == lag[tau]) else -1,
            0, "abs")
    ratios = {}
    for T in (short, long):
        delayed = fold_averaged_sgd(lag, T, p["replications"], p["seed"], p["sigma"])
        fresh = fold_averaged_sgd(np.zeros(T, np.int64), T, p["replications"], p["seed"], p["sigma"])
        ratios[T] = float(delayed.mean() / fresh.mean())
    # THEORY.md C7: the ratio is ~1.07 at T = 300 and ~1.00 at T = 30000 (tau = 8, averaging).
    rec.add(f"excess-loss ratio delayed/undelayed, T={short}", 1.07, ratios[short], 0.10)
    rec.add(f"excess-loss ratio delayed/undelayed, T={long}", 1.0, ratios[long], 0.02)
    rec.add("ratio shrinks as T grows", True, ratios[long] < ratios[short], 0, "abs")
    rec.figure("async_convergence", {"T": [short, long], "ratio": [ratios[short], ratios[long]], "tau": tau})


# --- C8 stale synchronous parallel ------------------------------------------------------------------

@register("C8", "Stale synchronous parallel (Ho et al. 2013)",
          full={"gap_s": (0, 1, 3), "gap_means": (0.2, 0.5, 1.0, 2.0), "gap_updates": 5000,
                "periods": (1.0, 1.0, 2.0), "periodic_s": 2, "periodic_updates": 3000,
                "workers": 8, "s_values": (0, 1, 2, 4, 8, 32), "updates": 40_000, "tolerance": 0.03, "seed": 0},
          limits={"gap_s": (0, "a bound"), "s_values": (0, "a bound"), "periodic_s": (0, "a bound"), "workers": POSITIVE,
                  "updates": (1000, "a rate"), "gap_updates": POSITIVE, "periodic_updates": (100, "a rate")})
def check_c8(p: Params, rec: Recorder) -> None:
    means = p["gap_means"]
    for s in p["gap_s"]:
        tr = timing([{"count": 1, "compute": {"dist": "exponential", "mean": m}} for m in means], kind="ssp",
                    algorithm={"staleness_bound": s}, updates=p["gap_updates"], seed=s).trace
        worker = tr.worker[tr.member_gid[tr.member_offsets[:-1]]]  # the committing worker of each update
        clocks = np.zeros((len(worker), len(means)), int)
        clocks[np.arange(len(worker)), worker] = 1
        clocks = np.cumsum(clocks, axis=0)
        rec.add(f"SSP max clock gap s={s} (bound s+1)", theory.ssp_max_clock_gap(s),
                int(np.max(clocks.max(axis=1) - clocks.min(axis=1))), 0, "max")

    periods = list(p["periods"])
    groups = [{"count": 1, "compute": T} for T in periods]
    for s, kw in ((p["periodic_s"], {"kind": "ssp", "algorithm": {"staleness_bound": p["periodic_s"]}}), (None, {"kind": "async"})):
        t = timing(groups, updates=p["periodic_updates"], **kw).trace.u_applied
        first = len(t) // 4  # past the start-up transient
        rate = (len(t) - 1 - first) / (t[-1] - t[first])
        label = f"SSP s={s}" if s is not None else "async"
        rec.add(f"throughput, periods {','.join(f'{x:g}' for x in periods)}, {label}",
                theory.ssp_periodic_throughput(periods, s), rate, 1e-3)

    P, N = p["workers"], p["updates"]
    rows = []
    for s in p["s_values"]:
        rate = N / timing({"count": P, "compute": EXP1}, kind="ssp", algorithm={"staleness_bound": s}, updates=N, seed=p["seed"]).sim_time
        if s == 0:
            rec.add(f"SSP s=0 (BSP) throughput, P={P}, Exp(1)", P / theory.harmonic(P), rate, p["tolerance"])
        elif P == 8 and s in theory.SSP_EXP_THROUGHPUT_REFERENCE:
            rec.add(f"SSP throughput s={s}, P=8, Exp(1) (ref.)", theory.SSP_EXP_THROUGHPUT_REFERENCE[s], rate, p["tolerance"])
        else:  # no reference value: only the bounds BSP <= X <= async
            rec.add(f"SSP throughput s={s}, P={P}: >= BSP", P / theory.harmonic(P), rate, 0, "min")
            rec.add(f"SSP throughput s={s}, P={P}: <= async", float(P), rate, 0, "max")
        rows.append((s, rate))
    rec.figure("ssp_throughput", {"P": P, "s": [r[0] for r in rows], "simulated": [r[1] for r in rows],
                                  "reference": {str(k): v for k, v in theory.SSP_EXP_THROUGHPUT_REFERENCE.items()} if P == 8 else {},
                                  "bsp": P / theory.harmonic(P), "async": float(P)})


# --- C9 delay-adaptive steps ----------------------------------------------------------------------

@register("C9", "Delay-adaptive steps ignore a straggler (Mishchenko et al. 2022)",
          full={"fast_workers": 7, "slowdowns": (10.0, 100.0), "eta": 0.1, "dim": 8, "updates": 700, "target": 1e-3,
                "tolerance": 0.10, "seed": 11},
          limits={"fast_workers": POSITIVE, "slowdowns": (1.0, "a slowdown factor"), "dim": POSITIVE, "updates": (10, "a run"),
                  "eta": (1e-9, "a step"), "target": (1e-12, "a loss ratio")})
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


# --- C10 backup workers -----------------------------------------------------------------------------

@register("C10", "Backup workers (Chen et al. 2016)",
          full={"n": 50, "backups": (0, 1, 2, 4, 8), "rounds": 5000, "tolerance": 0.015},
          limits={"n": POSITIVE, "backups": (0, "backup workers"), "rounds": (100, "a mean")})
def check_c10(p: Params, rec: Recorder) -> None:
    N, rounds = p["n"], p["rounds"]
    for b in p["backups"]:
        sim = timing({"count": N + b, "compute": EXP1}, kind="sync", algorithm={"backup": b}, updates=rounds, seed=b).sim_time
        rec.add(f"round time, N={N} of N+b, b={b}", theory.backup_workers_expected_time(N, b), sim / rounds, p["tolerance"])


# --- C11 EASGD and local SGD -------------------------------------------------------------------------

DRIFT_ROWS = 64


def drift_model(lams: list[float], cs: list[float], seed: int) -> tuple[Any, Any]:
    """Worker i's objective f_i = lam_i (w - c_i)^2 / 2 (THEORY.md C11, client drift).

    A user model for the scenario (``model.name = "asgd_sim.validate_checks:drift_model"``): each
    training row of `drift_data` is a row index; the rows are dealt out to workers as the
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


@register("C11", "EASGD conservation, local SGD, client drift (Zhang et al. 2015)",
          full={"workers": 4, "alpha": 0.3, "lr": 0.1, "local_steps": 3, "updates": 120, "seed": 2,
                "lams": (0.25, 0.5, 1.0, 2.0), "cs": (-2.0, -1.0, 1.0, 2.0), "drift_eta": 0.2, "drift_steps": 5, "rounds": 40},
          limits={"workers": POSITIVE, "local_steps": POSITIVE, "drift_steps": POSITIVE, "updates": POSITIVE,
                  "rounds": POSITIVE, "lams": (1e-9, "curvatures")})
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
                  model={"name": "asgd_sim.validate_checks:drift_model", "options": {"lams": lams, "cs": cs, "seed": 1}},
                  data={"factory": "asgd_sim.validate_checks:drift_data", "batch_size": 4},
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


def _drift_owner(workers: int, seed: int) -> np.ndarray:
    """Which worker each drift row belongs to (as the simulator deals them)."""
    from ..numerics.data import data_rng, partition_indices

    owner = np.zeros(DRIFT_ROWS, int)
    for worker, rows in enumerate(partition_indices(np.zeros(DRIFT_ROWS, np.int32), workers, "iid", 0.5, data_rng(seed, "partition"))):
        owner[rows] = worker
    return owner


# --- C12 throughput and lock contention ----------------------------------------------------------------

@register("C12", "Throughput and lock contention: a closed queue, not M/M/1",
          full={"means": (1.0, 0.5, 2.0, 0.25), "sync_updates": 20_000, "workers": (2, 5, 10, 20), "think": 1.0, "hold": 0.1,
                "lock_updates": 300_000, "lognormal_workers": (5, 20), "lognormal_cv": 1.5, "tolerance": 0.03},
          quick={"lock_updates": 200_000, "lognormal_workers": (5,)},
          limits={"means": (1e-9, "mean compute times"), "workers": POSITIVE, "lognormal_workers": POSITIVE,
                  "sync_updates": (100, "a rate"), "lock_updates": (1000, "a rate"), "think": (1e-9, "a time"),
                  "hold": (1e-9, "a time"), "lognormal_cv": (0.0, "a coefficient of variation")})
def check_c12(p: Params, rec: Recorder) -> None:
    means = list(p["means"])
    groups = [{"count": 1, "compute": {"dist": "exponential", "mean": m}} for m in means]
    M, N = len(means), p["sync_updates"]
    if M > 20:
        raise ScenarioError("C12.means", f"has {M} values: at most 20 (E[max] by inclusion-exclusion over subsets)")
    sync = timing(groups, kind="sync", updates=N, seed=1)
    rec.add(f"sync throughput M/E[max T_i], {M} het. exp.",
            theory.sync_throughput(M, theory.expected_max_exponential(1.0 / np.asarray(means))), M * N / sync.sim_time, 0.02)
    asynchronous = timing(groups, updates=4 * N, seed=1)
    rec.add(f"async throughput sum 1/E[T_i], {M} het. exp.", theory.async_throughput(means), 4 * N / asynchronous.sim_time, 0.02)

    Z, S = p["think"], p["hold"]
    cases = [(m, "exponential", EXP1) for m in p["workers"]]
    cases += [(m, f"lognormal cv {p['lognormal_cv']:g}", {"dist": "lognormal", "mean": 1.0, "cv": p["lognormal_cv"]})
              for m in p["lognormal_workers"]]
    points = []
    for m, label, compute in cases:
        compute = {**compute, "mean": Z}
        result = timing({"count": m, "compute": compute}, updates=p["lock_updates"], seed=m,
                        server={"lock": "global", "apply_time": {"dist": "exponential", "mean": S}})
        summary = summarize_trace(result.trace, result.sim_time)
        predicted = theory.closed_queue_lock(m, Z, S)
        rec.add(f"lock throughput X, M={m}, {label}", predicted["throughput"], summary["updates_per_s"], p["tolerance"])
        rec.add(f"lock wait Wq, M={m}, {label}", predicted["wait"], summary["lock_wait_mean"], p["tolerance"])
        points.append({"M": m, "compute": label, "X": summary["updates_per_s"], "Wq": summary["lock_wait_mean"]})
    top = max(m for m, _, _ in cases) + 5
    curve = list(range(1, top + 1))
    rec.figure("lock", {
        "think": Z, "hold": S, "points": points, "M": curve,
        "closed_X": [theory.closed_queue_lock(m, Z, S)["throughput"] for m in curve],
        "closed_Wq": [theory.closed_queue_lock(m, Z, S)["wait"] for m in curve],
        # The open M/M/1 model: each worker sends a request every Z, and waiting does not slow it.
        "open_X": [m / Z if m * S / Z < 1 else math.nan for m in curve],
        "open_Wq": [theory.open_mm1_lock_wait(m / Z, S) for m in curve]})
