"""Closed forms of the asynchronous methods for heterogeneous workers (docs/THEORY.md C13-C16), and
of workers that share a device (C17).

The fixed computation model: worker i needs tau_i seconds per stochastic gradient, workers sorted
so that tau_1 <= ... <= tau_n. Pure functions (numpy only), arguments validated with ValueError.

Sources: Tyurin & Richtarik, "Optimal time complexities of parallel stochastic optimization methods
under a fixed computation model", NeurIPS 2023 (arXiv:2305.12387): Rennala SGD and the optimal
time; Maranjyan, Tyurin & Richtarik, "Ringmaster ASGD", ICML 2025 (arXiv:2501.16168); Koloskova,
Stich & Jaggi, NeurIPS 2022 (arXiv:2206.08307), Remark 5; Nesterov, "Introductory Lectures on
Convex Optimization" (2004), section 2.1.2 (the worst-case quadratic); Kleinrock, "Time-shared
systems: a theoretical analysis", JACM 14(2), 1967, and Little, "A proof for the queuing formula
L = lambda W", Operations Research 9(3), 1961 (processor sharing).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["rennala_round_time", "rennala_round_bound", "ringmaster_window_bound", "optimal_workers", "optimal_time",
           "async_mean_delay", "worst_case_quadratic_constants", "sqrt_times", "processor_sharing"]


def _times(taus: Sequence[float]) -> np.ndarray:
    values = np.sort(np.asarray(taus, np.float64))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"taus = {list(taus)[:8]}...: need one or more finite compute times > 0")
    return values


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} = {value!r}: must be an integer >= 1")
    return int(value)


def sqrt_times(n: int, start: int = 1) -> np.ndarray:
    """tau_i = sqrt(i), i = start .. start + n - 1: the papers' 'sqrt' time model."""
    return np.sqrt(np.arange(start, start + _count("n", n), dtype=np.float64))


def rennala_round_time(taus: Sequence[float], k: int) -> float:
    """The time one Rennala round takes when every worker starts at its beginning and works without
    pause: min{t : sum_i floor(t / tau_i) >= k}, the k-th smallest of the completion times
    {j tau_i : j >= 1} (Tyurin & Richtarik 2023, Section 4). Exact; a heap of next completions."""
    times, k = _times(taus), _count("k", k)
    heap = [(float(t), float(t)) for t in times]
    heapq.heapify(heap)
    for _ in range(k - 1):
        done, tau = heapq.heappop(heap)
        heapq.heappush(heap, (done + tau, tau))
    return heap[0][0]


def rennala_round_bound(taus: Sequence[float], k: int) -> float:
    """The bound min_m (sum_{i<=m} 1/tau_i)^-1 (k + m) >= the round time (Tyurin & Richtarik 2023)."""
    times, k = _times(taus), _count("k", k)
    m = np.arange(1, times.size + 1)
    return float(np.min((k + m) / np.cumsum(1.0 / times)))


def ringmaster_window_bound(taus: Sequence[float], threshold: int) -> float:
    """With calculation stops, any R consecutive updates take at most
    min_m (sum_{i<=m} 1/tau_i)^-1 (R + 2m) seconds (Maranjyan, Tyurin & Richtarik 2025, Lemma 4.1's
    argument: after the window starts each worker i <= m loses at most one tau_i to a stop)."""
    times, R = _times(taus), _count("R", threshold)
    m = np.arange(1, times.size + 1)
    return float(np.min((R + 2 * m) / np.cumsum(1.0 / times)))


def optimal_workers(taus: Sequence[float], noise_over_eps: float) -> int:
    """m* = argmin_m (sum_{i<=m} 1/tau_i)^-1 (m + sigma^2/eps): how many of the fastest workers the
    optimal time uses (Tyurin & Richtarik 2023, Theorem 7.2 and the time T_homog)."""
    return int(np.argmin(_optimal_profile(taus, noise_over_eps))) + 1


def optimal_time(taus: Sequence[float], noise_over_eps: float) -> float:
    """min_m (sum_{i<=m} 1/tau_i)^-1 (m + sigma^2/eps): the optimal time per L Delta / eps, up to
    the constant the theory leaves open (T_homog = Theta(this * L Delta / eps))."""
    return float(np.min(_optimal_profile(taus, noise_over_eps)))


def _optimal_profile(taus: Sequence[float], noise_over_eps: float) -> np.ndarray:
    times = _times(taus)
    if not (math.isfinite(noise_over_eps) and noise_over_eps >= 0):
        raise ValueError(f"noise_over_eps = {noise_over_eps!r}: must be a finite number >= 0 (sigma^2 / eps)")
    m = np.arange(1, times.size + 1)
    return (m + noise_over_eps) / np.cumsum(1.0 / times)


def async_mean_delay(n: int) -> float:
    """Asynchronous SGD's mean delay, n - 1 for any compute times (Little's law, docs/THEORY.md C2;
    Koloskova et al. 2022, Remark 5: tau_avg = n - 1 in the standard model)."""
    return float(_count("n", n) - 1)


def worst_case_quadratic_constants(dim: int, smoothness: float = 1.0, noise: float = 0.0) -> dict[str, float]:
    """Nesterov's worst case f(x) = x'Ax/2 - b'x, A = (L/4) tridiag(-1, 2, -1), b = -(L/4) e1, at
    x0 = sqrt(d) e1: f*, f(x0) - f* (Delta), |grad f(x0)|^2 and the shared-noise variance sigma^2.

    f* = -(1/2) b'A^-1 b = -L d / (8 (d + 1)) since (T^-1)_11 = d / (d + 1) for T = tridiag(-1, 2, -1);
    f(x0) = d L / 4 + L sqrt(d) / 4; grad f(x0) = L sqrt(d)/4 (2 e1 - e2) + (L/4) e1."""
    d = _count("dim", dim)
    if not (math.isfinite(smoothness) and smoothness > 0):
        raise ValueError(f"smoothness = {smoothness!r}: must be > 0")
    L, root = float(smoothness), math.sqrt(d)
    f_star = -L * d / (8.0 * (d + 1))
    f0 = L * d / 4.0 + L * root / 4.0
    grad0 = (L * root / 2.0 + L / 4.0) ** 2 + ((L * root / 4.0) ** 2 if d > 1 else 0.0)
    return {"f_star": f_star, "delta": f0 - f_star, "grad_norm_sq_0": grad0, "sigma2": noise**2 * d}


def processor_sharing(workers: int, capacity: float, mean_work: float) -> dict[str, float]:
    """M always-busy workers sharing a device of capacity c by processor sharing, each computation
    at most at full speed (Kleinrock 1967): the device does min(M, c) seconds of work per second,
    so ``throughput`` = min(M, c) / E[work] computations per second, and with M computations in
    progress at every instant each takes ``time`` = M / throughput = max(1, M / c) E[work] on
    average (Little 1961). Whatever the work's distribution."""
    M = _count("workers", workers)
    for name, value in (("capacity", capacity), ("mean_work", mean_work)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} = {value!r}: must be a finite number > 0")
    throughput = min(M, capacity) / mean_work
    return {"throughput": throughput, "time": M / throughput}
