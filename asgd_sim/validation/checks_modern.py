"""The checks of ``asgd-sim validate`` for the methods of heterogeneous workers (C13-C16) and for
workers that share a device (C17).

C13-C15 run the timing engine only (fixed compute times tau_i = sqrt(i), the papers' 'sqrt' model,
on the ideal cluster); C16 runs the whole simulator on Nesterov's worst-case quadratic and reports
each method's time to a target against the optimal time (information: the theory's constants are
unknown). C17 runs the timing engine with M workers on one device. The closed forms are
`asgd_sim.validation.theory_modern`.
"""

from __future__ import annotations

import math

import numpy as np

from . import theory_modern as modern
from ..trace import APPLIED, DROPPED
from .checks_common import POSITIVE, applied_staleness, scenario, timing
from .framework import Check, Params, Recorder

__all__ = ["C13", "C14", "C15", "C16", "C17"]


def _sqrt_group(n: int) -> dict:
    """n workers, worker i (0-based in the group) computing for exactly sqrt(i + 1) seconds."""
    return {"count": n, "compute": {"dist": "constant", "value": "sqrt(i + 1)"}}


# --- C13 Rennala SGD's round time ----------------------------------------------------------------


def check_c13(p: Params, rec: Recorder) -> None:
    n, rounds = p["workers"], p["rounds"]
    taus = modern.sqrt_times(n)
    for k in p["k"]:
        tr = timing(_sqrt_group(n), updates=rounds, kind="rennala", algorithm={"k": k}).trace
        durations = np.diff(np.concatenate([[0.0], np.sort(tr.u_applied)]))
        predicted = modern.rennala_round_time(taus, k)
        worst = float(durations[np.argmax(np.abs(durations - predicted))])  # the round farthest from the prediction
        rec.add(f"round time, k={k}, n={n} (worst of {len(durations)})", predicted, worst, 1e-9, "abs")
        rec.add(f"round time <= (sum 1/tau)^-1 (k + m), k={k}", modern.rennala_round_bound(taus, k), worst, 0, "max")
        per_round = np.diff(tr.member_offsets)
        rec.add(f"gradients per round, k={k} (worst round)", k, int(per_round[np.argmax(np.abs(per_round - k))]), 0, "abs")


C13 = Check("C13", "Rennala SGD: the round time with fixed compute times (Tyurin & Richtarik 2023)", check_c13,
            full={"workers": 100, "k": (1, 6, 50, 300), "rounds": 200},
            quick={"workers": 30, "k": (1, 6, 40), "rounds": 60},
            limits={"workers": POSITIVE, "k": POSITIVE, "rounds": (1, "at least one round")})


# --- C14 Ringmaster ASGD with calculation stops -----------------------------------------------------


def check_c14(p: Params, rec: Recorder) -> None:
    n, updates = p["workers"], p["updates"]
    taus = modern.sqrt_times(n)
    for R in p["thresholds"]:
        stopped = timing(_sqrt_group(n), updates=updates, kind="ringmaster", algorithm={"delay_threshold": R, "stops": True}).trace
        times = np.sort(stopped.u_applied)
        windows = times[R:] - times[:-R]
        rec.add(f"any {R} consecutive updates, stops (s)", modern.ringmaster_window_bound(taus, R), float(windows.max()), 0, "max")
        rec.add(f"largest applied delay, stops, R={R}", R - 1, int(applied_staleness(stopped).max()), 0, "max")
        plain = timing(_sqrt_group(n), updates=updates, kind="ringmaster", algorithm={"delay_threshold": R}).trace
        rec.add(f"largest applied delay, no stops (Alg. 4), R={R}", R - 1, int(applied_staleness(plain).max()), 0, "max",
                note=f"{int((plain.fate == DROPPED).sum())} dropped")


C14 = Check("C14", "Ringmaster ASGD: R consecutive updates and the delays applied (Maranjyan et al. 2025)", check_c14,
            full={"workers": 200, "thresholds": (2, 6, 24), "updates": 20_000},
            quick={"workers": 50, "thresholds": (2, 6), "updates": 4000},
            limits={"workers": POSITIVE, "thresholds": POSITIVE, "updates": (100, "windows to look at")})


# --- C15 asynchronous SGD's mean delay --------------------------------------------------------------


def check_c15(p: Params, rec: Recorder) -> None:
    n = p["workers"]
    tau = applied_staleness(timing(_sqrt_group(n), updates=p["updates"]).trace)
    rec.add(f"mean delay, tau_i = sqrt(i), n={n}", modern.async_mean_delay(n), float(tau.mean()), p["tolerance"])


C15 = Check("C15", "Asynchronous SGD's mean delay n - 1 with tau_i = sqrt(i) (Koloskova et al. 2022)", check_c15,
            full={"workers": 1000, "updates": 200_000, "tolerance": 0.01},
            quick={"workers": 200, "updates": 40_000},
            limits={"workers": (2, "two or more workers"), "updates": (1000, "a mean")})


# --- C16 the optimal number of workers and each method's time ----------------------------------------


def check_c16(p: Params, rec: Recorder) -> None:
    n, d, noise, target = p["workers"], p["dim"], p["noise"], p["target"]
    constants = modern.worst_case_quadratic_constants(d, 1.0, noise)
    ratio = constants["sigma2"] / target  # sigma^2 / eps: the batch Rennala needs, the R Ringmaster needs
    taus = modern.sqrt_times(n)
    m_star = modern.optimal_workers(taus, ratio)
    optimal = modern.optimal_time(taus, ratio) * constants["delta"] / target  # T_homog without its constant
    rec.add(f"m*, n={n}, sigma^2/eps={ratio:.3g}", m_star, m_star, 0, "info",
            note="m* = argmin_m (sum_(i<=m) 1/tau_i)^-1 (m + sigma^2/eps): the fastest workers the optimal time uses")
    batch = max(1, math.ceil(ratio))
    model = {"name": "worst_case_quadratic", "dim": d, "noise": noise, "noise_mode": "shared"}
    methods = {  # the step sizes of the papers' theorems (L = 1)
        "ASGD (adaptive step)": ({"kind": "async"}, n, {"learning_rate": min(1.0 / (4 * n), target / (4 * constants["sigma2"])),
                                                         "staleness_rule": "adaptive"}),
        "naive optimal (m* fastest)": ({"kind": "async"}, m_star,
                                            {"learning_rate": min(1.0 / (2 * m_star), target / (4 * constants["sigma2"]))}),
        "Rennala": ({"kind": "rennala", "k": batch}, n, {"learning_rate": min(1.0, target * batch / (2 * constants["sigma2"]))}),
        "Ringmaster (stops)": ({"kind": "ringmaster", "delay_threshold": batch, "stops": True}, n,
                              {"learning_rate": min(1.0 / (2 * batch), target / (4 * constants["sigma2"]))}),
    }
    for label, (algorithm, workers, optimizer) in methods.items():
        sc = scenario(_sqrt_group(workers), updates=p["updates"], kind=algorithm.pop("kind"), model=model, algorithm=algorithm,
                      optimizer=optimizer, run={"eval_every": p["eval_every"], "until_time": p["horizon"]})
        from ..runner import simulate  # imports JAX: only the numerics checks pay for it

        result = simulate(sc)
        reached = np.flatnonzero(result.metrics["grad_norm_sq"] <= target)
        seconds = float(result.metrics["sim_time"][reached[0]]) if reached.size else math.nan
        rec.add(f"time to target: {label}", optimal, seconds, 0, "info",
                note=(f"|grad f|^2 <= {target:g} after {seconds:.4g} s = {seconds / optimal:.3g} x the optimal time without its constant"
                      if reached.size else f"|grad f|^2 <= {target:g} not reached in {p['horizon']:g} s"))


C16 = Check("C16", "The optimal time and m* under fixed compute times (Tyurin & Richtarik 2023)", check_c16,
            full={"workers": 100, "dim": 64, "noise": 0.05, "target": 0.05, "horizon": 400.0, "updates": 400_000,
                  "eval_every": 20},
            quick={"workers": 40, "horizon": 150.0},
            limits={"workers": POSITIVE, "dim": (2, "a dimension"), "noise": (0.0, "a standard deviation"),
                    "target": (1e-12, "a target"), "horizon": (1e-9, "seconds"), "updates": POSITIVE, "eval_every": POSITIVE})


# --- C17 processor sharing on a shared device --------------------------------------------------------

PS_WORK = {"exponential": {"dist": "exponential", "mean": 1.0}, "lognormal cv 1.5": {"dist": "lognormal", "mean": 1.0, "cv": 1.5},
           "constant": 1.0}


def check_c17(p: Params, rec: Recorder) -> None:
    cases = [(m, p["capacity"], "exponential") for m in p["workers"]]
    cases += [(p["other_workers"], c, label) for c in p["other_capacities"] for label in PS_WORK if label != "exponential"]
    for m, capacity, label in cases:
        tr = timing({"count": m, "compute": PS_WORK[label], "device": "d"}, updates=p["updates"], seed=m,
                    devices=[{"name": "d", "capacity": capacity}], server={"lock": "none"}).trace
        done = tr.fate == APPLIED
        span = float(np.max(tr.u_applied))
        predicted = modern.processor_sharing(m, capacity, 1.0)
        rec.add(f"throughput min(M, c)/E[work], M={m}, c={capacity:g}, {label}", predicted["throughput"],
                tr.num_update_rows / span, p["tolerance"])
        rec.add(f"computation time max(1, M/c) E[work], M={m}, c={capacity:g}, {label}", predicted["time"],
                float(np.mean(tr.t_compute_end[done] - tr.t_compute_start[done])), p["tolerance"])


C17 = Check("C17", "Processor sharing: workers on one device (Kleinrock 1967)", check_c17,
            full={"workers": (1, 2, 4, 8), "capacity": 2.0, "other_workers": 6, "other_capacities": (2.5,), "updates": 40_000,
                  "tolerance": 0.02},
            quick={"updates": 10_000, "tolerance": 0.03},
            limits={"workers": POSITIVE, "capacity": (1e-9, "a capacity"), "other_workers": POSITIVE,
                    "other_capacities": (1e-9, "a capacity"), "updates": (1000, "a mean")})
