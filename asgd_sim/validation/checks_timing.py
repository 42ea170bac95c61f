"""The checks of ``asgd-sim validate`` that run the timing engine only: C2, C7, C8, C10, C12.

Each runs ideal-cluster scenarios through ``simulate_timing`` (the schedule, no gradients) and
compares what the trace measures (staleness, throughput, round times, lock waits) with a closed
form of `asgd_sim.validation.theory` at the check's parameters. Where a check needs iterates (C7),
it folds them in numpy over the schedule's read versions. None of them imports JAX. Sample sizes
(the ``full`` defaults are docs/THEORY.md's) keep the statistical error a fraction of each
tolerance; ``quick`` ones keep it below the tolerance.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np

from . import theory
from ..errors import ScenarioError
from ..results.summary import summarize_trace
from ..trace import APPLIED, PENDING
from .checks_common import EXP1, POSITIVE, applied_staleness, timing, update_reads
from .framework import Check, Params, Recorder

__all__ = ["C2", "C7", "C8", "C10", "C12"]


# --- C2 staleness distribution in a parameter server ---------------------------------------------

LITTLE_DISTRIBUTIONS = {
    "exponential": EXP1,
    "lognormal cv 1.5": {"dist": "lognormal", "mean": 1.0, "cv": 1.5},
    "pareto alpha 1.5": {"dist": "pareto", "scale": 1.0, "alpha": 1.5},
    "uniform": {"dist": "uniform", "low": 0.5, "high": 1.5},
    "constant": 1.0,
}


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


C2 = Check("C2", "Staleness distribution in a parameter server", check_c2,
           full={"workers": (4, 8, 16), "updates": 100_000, "little_workers": 8, "little_updates": 3000,
                 "means": (0.5, 1.0, 1.0, 2.0, 4.0), "means_updates": 300_000,
                 "shifted_b": (0.2, 1.0), "shifted_workers": (2, 4, 8, 16), "shifted_updates": 150_000, "seed": 11},
           quick={"means_updates": 150_000, "shifted_workers": (4, 16), "shifted_updates": 100_000},
           limits={"workers": (2, "staleness needs two workers"), "little_workers": POSITIVE, "updates": (1000, "a histogram"),
                   "little_updates": POSITIVE, "means_updates": (1000, "a histogram"), "shifted_updates": (1000, "a variance")})


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


C7 = Check("C7", "Classical async convergence: delays are asymptotically negligible (Agarwal & Duchi 2011)", check_c7,
           full={"tau": 8, "short": 300, "long": 30_000, "replications": 4000, "sigma": 1.0, "seed": 7},
           quick={"long": 10_000, "replications": 2000},
           limits={"tau": (1, "a delay"), "short": (10, "a run"), "replications": (100, "a mean")})


# --- C8 stale synchronous parallel ------------------------------------------------------------------

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


C8 = Check("C8", "Stale synchronous parallel (Ho et al. 2013)", check_c8,
           full={"gap_s": (0, 1, 3), "gap_means": (0.2, 0.5, 1.0, 2.0), "gap_updates": 5000,
                 "periods": (1.0, 1.0, 2.0), "periodic_s": 2, "periodic_updates": 3000,
                 "workers": 8, "s_values": (0, 1, 2, 4, 8, 32), "updates": 40_000, "tolerance": 0.03, "seed": 0},
           limits={"gap_s": (0, "a bound"), "s_values": (0, "a bound"), "periodic_s": (0, "a bound"), "workers": POSITIVE,
                   "updates": (1000, "a rate"), "gap_updates": POSITIVE, "periodic_updates": (100, "a rate")})


# --- C10 backup workers -----------------------------------------------------------------------------

def check_c10(p: Params, rec: Recorder) -> None:
    N, rounds = p["n"], p["rounds"]
    for b in p["backups"]:
        sim = timing({"count": N + b, "compute": EXP1}, kind="sync", algorithm={"backup": b}, updates=rounds, seed=b).sim_time
        rec.add(f"round time, N={N} of N+b, b={b}", theory.backup_workers_expected_time(N, b), sim / rounds, p["tolerance"])


C10 = Check("C10", "Backup workers (Chen et al. 2016)", check_c10,
            full={"n": 50, "backups": (0, 1, 2, 4, 8), "rounds": 5000, "tolerance": 0.015},
            limits={"n": POSITIVE, "backups": (0, "backup workers"), "rounds": (100, "a mean")})


# --- C12 throughput and lock contention ----------------------------------------------------------------

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


C12 = Check("C12", "Throughput and lock contention: a closed queue, not M/M/1", check_c12,
            full={"means": (1.0, 0.5, 2.0, 0.25), "sync_updates": 20_000, "workers": (2, 5, 10, 20), "think": 1.0, "hold": 0.1,
                  "lock_updates": 300_000, "lognormal_workers": (5, 20), "lognormal_cv": 1.5, "tolerance": 0.03},
            quick={"lock_updates": 200_000, "lognormal_workers": (5,)},
            limits={"means": (1e-9, "mean compute times"), "workers": POSITIVE, "lognormal_workers": POSITIVE,
                    "sync_updates": (100, "a rate"), "lock_updates": (1000, "a rate"), "think": (1e-9, "a time"),
                    "hold": (1e-9, "a time"), "lognormal_cv": (0.0, "a coefficient of variation")})
