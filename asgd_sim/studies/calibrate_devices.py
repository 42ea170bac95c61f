"""Calibrate the device model (``[[devices]]``): workers whose computations share a device.

Workers that share cores or a GPU stretch each other's computations: under processor sharing
(Kleinrock 1967) a device of capacity c runs n computations in progress at min(1, c/n) of full
speed each. Given c, a real trace determines each computation's *work* (seconds at full speed):
the integral of that rate over its span, with n(t) read from the spans of every computation on the
device (cancelled ones too: they loaded it while they ran). So the model is fitted as:

- for each candidate c, the work of every computation, and each worker's work distribution fitted
  by maximum likelihood as `calibrate.fit_distribution` does;
- the log-likelihood of the observed durations D given the others' spans: D = g(W) with
  dW/dD = r(end), the rate at the computation's end, so log f_D(D) = log f_W(W) + log r(end);
- c maximising it (a grid, then a bounded scalar search around the best point).

This is the exact likelihood of the durations, not an approximation: ordered by end time, a
computation's work depends only on spans up to its end, so the Jacobian of the works in the
durations is triangular, its determinant the product of the rates at the ends. A device that is
over-subscribed at every instant determines only the ratio of work to capacity (the likelihood is
flat along it, and any point of it simulates the same); c is found where the trace also shows the
device under capacity.

The device model is kept when its AIC (2k - 2 log L, one parameter more per device: its capacity)
is below that of independent compute times (the same fit on the durations themselves). With
c >= the most computations ever in progress at once, every rate is 1 and the two models coincide,
so the device model costs its extra parameter unless the trace shows the stretching.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..trace import CANCELLED, Trace
from .fits import parametric_fits

__all__ = ["Overlap", "fit_device", "best_aic", "SHARED_DEVICE"]

SHARED_DEVICE = "shared"  # the device a calibration puts every worker on when the scenario names none
_GRID = 32  # candidate capacities (log-spaced) before the bounded search


class Overlap:
    """The computations' spans on one device, and how many are in progress at each instant."""

    def __init__(self, start: np.ndarray, end: np.ndarray) -> None:
        self.points = np.unique(np.concatenate([start, end]))
        self.first = np.searchsorted(self.points, start)
        self.last = np.searchsorted(self.points, end)
        steps = np.zeros(self.points.size)
        np.add.at(steps, self.first, 1.0)
        np.add.at(steps, self.last, -1.0)
        self.running = np.cumsum(steps)[:-1]  # on [points[j], points[j + 1])
        self.widths = np.diff(self.points)
        self.most = int(self.running.max()) if self.running.size else 1

    def work(self, capacity: float) -> tuple[np.ndarray, np.ndarray]:
        """Each computation's work at ``capacity``, and its rate as it ended."""
        rate = np.minimum(1.0, capacity / np.maximum(self.running, 1.0))
        done = np.concatenate([[0.0], np.cumsum(rate * self.widths)])
        ended = rate[np.maximum(self.last - 1, 0)] if rate.size else np.ones(self.last.size)
        return done[self.last] - done[self.first], ended


def best_aic(samples: np.ndarray) -> tuple[float, float, int]:
    """(AIC, log-likelihood, parameters) of the best parametric fit of ``samples``."""
    fits = parametric_fits(samples)
    name = min(fits, key=lambda key: fits[key]["aic"])
    return fits[name]["aic"], fits[name]["loglik"], fits[name]["k"]


def _loglik(overlap: Overlap, capacity: float, owners: list[np.ndarray]) -> tuple[float, int]:
    """The durations' log-likelihood at ``capacity`` (each worker's work fitted), and its parameters."""
    work, ended = overlap.work(capacity)
    total, k = 0.0, 0
    for rows in owners:
        _, loglik, params = best_aic(work[rows])
        total += loglik + float(np.log(ended[rows]).sum())
        k += params
    return total, k


def fit_device(trace: Trace, workers: list[int]) -> dict[str, Any]:
    """Fit one device shared by ``workers`` from ``trace``: its capacity, the AIC of the device
    model and of independent compute times over these workers' computations, and each worker's
    work samples at the fitted capacity."""
    from scipy.optimize import minimize_scalar

    t = trace.times
    start, end = t["t_compute_start"], t["t_compute_end"]
    on = np.isin(trace.worker, workers) & np.isfinite(start) & np.isfinite(end)
    rows = np.flatnonzero(on)
    overlap = Overlap(start[rows], end[rows])
    fitted = trace.fate[rows] != CANCELLED  # (a cancelled computation was cut short: it loads, it is not fitted)
    owners = [np.flatnonzero(fitted & (trace.worker[rows] == w)) for w in workers]
    durations = end[rows] - start[rows]
    independent = [best_aic(durations[mine]) for mine in owners]
    aic_independent = sum(a for a, _, _ in independent)

    def cost(log_c: float) -> float:
        loglik, _ = _loglik(overlap, math.exp(log_c), owners)
        return -loglik

    # Above the most computations ever in progress at once the model is the independent one.
    low, high = math.log(0.05), math.log(max(overlap.most, 1) + 0.5)
    grid = np.linspace(low, high, _GRID)
    costs = [cost(x) for x in grid]
    best = int(np.argmin(costs))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, _GRID - 1)]
    found = minimize_scalar(cost, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    log_c = float(found.x) if found.fun < costs[best] else float(grid[best])
    capacity = math.exp(log_c)
    loglik, k = _loglik(overlap, capacity, owners)
    work, _ = overlap.work(capacity)
    return {
        "workers": list(workers), "capacity": capacity, "most_in_progress": overlap.most,
        "aic_device": 2 * (k + 1) - 2 * loglik, "aic_independent": aic_independent,
        "work": [work[mine] for mine in owners],
    }
