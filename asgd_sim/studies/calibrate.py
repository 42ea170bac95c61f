"""Calibrate a scenario's timing from a real run's trace (``asgd-sim calibrate RUN_DIR --out s.toml``).

What is fitted, from the trace alone:
- each worker's compute time: ``t_compute_end - t_compute_start`` of its gradients that were not
  cancelled (a cancelled compute was cut short);
- the network latency (one distribution for every message, as the scenario has): the parameters'
  trip back, ``t_compute_start - t_read`` of a fresh read, and the push, ``t_arrive -
  t_compute_end``. Everything a real message costs (a device transfer, serialisation, the
  worker's own bookkeeping) is in these gaps, so the calibrated network has infinite bandwidth;
- the server's apply time: ``t_applied - t_lock`` of each update row;
- the lock hand-over (``server.lock_handoff``): when an update was already waiting for a lock as
  its holder finished, ``t_lock`` of the next holder minus ``t_applied`` of the last. A real
  server pays it on every contended update (the waiter wakes and takes the GIL, the last holder's
  bookkeeping runs first); where the server's lock is the bottleneck it sets the throughput.

Each sample is fitted by maximum likelihood (scipy.stats) as exponential, shifted exponential,
lognormal and gamma, and the fit with the smallest AIC (2k - 2 log L) wins; a sample whose spread is
under 1 % of its mean is a constant. If even the best fit is rejected by a Kolmogorov-Smirnov test
(p < 0.01, with at least 50 samples), the measured values themselves are used (``empirical``). The
calibrated scenario is the real run's scenario with one worker group per worker and these timings.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..scenario.config import NetworkConfig, Scenario, ServerConfig, WorkerGroup
from ..scenario.distributions import Constant, Distribution, Empirical, Exponential, Gamma, LogNormal, ShiftedExponential
from ..errors import ScenarioError
from ..trace import CANCELLED, Trace

__all__ = ["fit_distribution", "calibrate", "calibrate_run", "lock_handoffs", "timing_samples"]

CONSTANT_CV = 0.01  # below this coefficient of variation a duration is taken as constant
KS_REJECT_P = 0.01
EMPIRICAL_MAX_VALUES = 2000  # an empirical fit keeps at most this many measured values


def fit_distribution(samples: np.ndarray) -> tuple[Distribution, dict[str, Any]]:
    """The maximum-likelihood fit with the best AIC, and the table of candidates."""
    from scipy import stats

    x = np.asarray(samples, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("no samples to fit")
    x = np.maximum(x, 1e-9)
    mean, std = float(x.mean()), float(x.std())
    info: dict[str, Any] = {"n": int(x.size), "mean": mean, "cv": std / mean if mean > 0 else 0.0, "candidates": {}}
    if x.size < 3 or std <= CONSTANT_CV * mean:
        info["chosen"] = "constant"
        return Constant(mean), info
    fits: dict[str, tuple[Distribution, float, int, Any]] = {}
    scale = float(np.exp(np.mean(np.log(x))))  # fit in units of the sample: better conditioned
    y = x / scale
    with np.errstate(all="ignore"):
        loc, lam = stats.expon.fit(y, floc=0)
        fits["exponential"] = (Exponential(lam * scale), float(stats.expon.logpdf(y, 0, lam).sum()), 1, stats.expon(0, lam))
        shift = float(y.min()) * (1 - 1e-9)
        tail = float(y.mean() - shift)
        if tail > 0:
            fits["shifted_exponential"] = (ShiftedExponential(shift * scale, tail * scale), float(stats.expon.logpdf(y, shift, tail).sum()), 2,
                                           stats.expon(shift, tail))
        s, _, sc = stats.lognorm.fit(y, floc=0)
        fits["lognormal"] = (LogNormal(float(sc * math.exp(s * s / 2)) * scale, float(math.sqrt(math.expm1(s * s)))),
                             float(stats.lognorm.logpdf(y, s, 0, sc).sum()), 2, stats.lognorm(s, 0, sc))
        a, _, sc = stats.gamma.fit(y, floc=0)
        fits["gamma"] = (Gamma(float(a * sc) * scale, float(1 / math.sqrt(a))), float(stats.gamma.logpdf(y, a, 0, sc).sum()), 2,
                         stats.gamma(a, 0, sc))
    best, best_aic = "", math.inf
    for name, (dist, loglik, k, _) in fits.items():
        # The log-likelihood of x (seconds) is that of y = x/scale minus n log(scale): the same for all.
        loglik_x = loglik - x.size * math.log(scale)
        aic = 2 * k - 2 * loglik_x if math.isfinite(loglik_x) else math.inf
        info["candidates"][name] = {"aic": aic, "loglik": loglik_x, **dist.to_dict()}
        if aic < best_aic:
            best, best_aic = name, aic
    if not best:
        info["chosen"] = "empirical"
        return Empirical(tuple(_thin(x))), info
    p_value = float(stats.kstest(y, fits[best][3].cdf).pvalue)
    info["ks_p"] = p_value
    if p_value < KS_REJECT_P and x.size >= 50:
        info["chosen"] = "empirical"
        info["rejected"] = best
        return Empirical(tuple(_thin(x))), info
    info["chosen"] = best
    return fits[best][0], info


def _thin(x: np.ndarray) -> list[float]:
    """At most EMPIRICAL_MAX_VALUES values, keeping the distribution (evenly spaced quantiles)."""
    if x.size <= EMPIRICAL_MAX_VALUES:
        return [float(v) for v in x]
    return [float(v) for v in np.quantile(x, np.linspace(0, 1, EMPIRICAL_MAX_VALUES))]


def lock_handoffs(trace: Trace, server: ServerConfig) -> np.ndarray:
    """Gaps between a lock's holder finishing and the next holder, already waiting, starting.

    One sequence of holds per lock: every update row under a global lock, each shard's rows under
    shard locks, whole updates (rows sharing a request and lock time) when an update holds all its
    locks at once. A lock-free server hands nothing over.
    """
    if server.lock == "none" or trace.num_update_rows < 2:
        return np.zeros(0)
    request, lock, applied, shard = trace.u_request, trace.u_lock, trace.u_applied, trace.u_shard
    if server.atomic and server.lock in ("shard", "rw") and server.shards > 1:
        _, first, group = np.unique(np.stack([request, lock]), axis=1, return_index=True, return_inverse=True)
        ends = np.full(first.size, -np.inf)
        np.maximum.at(ends, group.ravel(), applied)
        sequences = [(request[first], lock[first], ends)]
    elif server.lock == "global" or server.shards == 1:
        sequences = [(request, lock, applied)]
    else:
        sequences = [(request[shard == s], lock[shard == s], applied[shard == s]) for s in range(server.shards)]
    gaps = []
    for req, start, end in sequences:
        order = np.argsort(start, kind="stable")
        req, start, end = req[order], start[order], end[order]
        waiting = req[1:] < end[:-1]  # the next holder asked before this one finished
        gaps.append((start[1:] - end[:-1])[waiting])
    gaps = np.concatenate(gaps)
    return gaps[np.isfinite(gaps) & (gaps >= 0)]


def timing_samples(trace: Trace, workers: int, server: ServerConfig | None = None) -> dict[str, Any]:
    """The measured durations: per-worker compute times, message latencies, apply times, hand-overs."""
    t = trace.times
    ok = trace.fate != CANCELLED
    compute = t["t_compute_end"] - t["t_compute_start"]
    per_worker = [compute[(trace.worker == w) & ok & np.isfinite(compute)] for w in range(workers)]
    # A fresh read: the first gradient computed on it (not a K-batch-sync worker reusing its parameters).
    first = np.ones(trace.num_gradients, bool)
    for w in range(workers):
        mine = np.flatnonzero(trace.worker == w)
        if mine.size > 1:
            same = (t["t_read"][mine[1:]] == t["t_read"][mine[:-1]])
            first[mine[1:][same]] = False
    back = (t["t_compute_start"] - t["t_read"])[first & (trace.local_step == 0)]
    push = (t["t_arrive"] - t["t_compute_end"])
    latency = np.concatenate([back[np.isfinite(back)], push[np.isfinite(push)]])
    apply = trace.u_applied - trace.u_lock
    handoff = lock_handoffs(trace, server) if server is not None else np.zeros(0)
    return {"compute": per_worker, "latency": latency[latency >= 0], "apply": apply[np.isfinite(apply) & (apply >= 0)],
            "handoff": handoff}


def calibrate(scenario: Scenario, trace: Trace) -> tuple[Scenario, dict[str, Any]]:
    """The scenario with its timing fitted to ``trace`` (a real run of ``scenario``)."""
    M = scenario.num_workers
    samples = timing_samples(trace, M, scenario.server)
    names = [g.name for g in scenario.workers for _ in range(g.count)]
    groups, report = [], {"workers": []}
    for w in range(M):
        if samples["compute"][w].size == 0:
            raise ScenarioError(f"worker {w}", "computed no gradient in this run: nothing to calibrate its compute time from")
        dist, info = fit_distribution(samples["compute"][w])
        groups.append(WorkerGroup(name=f"{names[w]}-{w}", count=1, compute=dist))
        report["workers"].append({"worker": w, **info, "fit": dist.to_dict()})
    fitted = {}
    for key, name in (("latency", "latency"), ("apply", "apply_time"), ("handoff", "lock_handoff")):
        dist, info = fit_distribution(samples[key]) if samples[key].size else (Constant(0.0), {"chosen": "constant", "n": 0})
        fitted[key] = dist
        report[name] = {**info, "fit": dist.to_dict()}
    calibrated = dataclasses.replace(
        scenario, name=f"{scenario.name}-calibrated", workers=tuple(groups), racks=(),
        network=NetworkConfig(latency=fitted["latency"], bandwidth=math.inf, server_bandwidth=math.inf, compression=1.0),
        server=dataclasses.replace(scenario.server, apply_time=fitted["apply"], lock_handoff=fitted["handoff"]),
    )
    return calibrated, report


def calibrate_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[Scenario, str]:
    """Calibrate from a run folder; write the scenario to ``out``; returns it and a printed report."""
    from ..scenario.files import dump_scenario, load_scenario

    run_dir = Path(run_dir)
    if not (run_dir / "scenario.toml").is_file() or not (run_dir / "gradients.parquet").is_file():
        raise ScenarioError(str(run_dir), "is not a run folder: it needs scenario.toml, gradients.parquet and updates.parquet")
    scenario = load_scenario(run_dir / "scenario.toml")
    trace = Trace.load(run_dir)
    calibrated, report = calibrate(scenario, trace)
    if out is not None:
        dump_scenario(calibrated, out)
    return calibrated, format_report(report)


def format_report(report: dict[str, Any]) -> str:
    def line(label: str, info: dict[str, Any]) -> str:
        fit = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in info["fit"].items() if k != "values"}
        extra = f" ({len(info['fit']['values'])} values)" if "values" in info["fit"] else ""
        return f"{label:<12} n={info.get('n', 0):<6} {fit}{extra}"

    lines = [line(f"worker {w['worker']}", w) for w in report["workers"]]
    lines.append(line("latency", report["latency"]))
    lines.append(line("apply time", report["apply_time"]))
    lines.append(line("lock handoff", report["lock_handoff"]))
    return "\n".join(lines)
