"""Closed forms from docs/THEORY.md (C1-C12): what the simulator must reproduce (C13-C16: `theory_modern`).

Each function is one published result or exact derivation, written once so that the tests and
the ``asgd-sim validate`` report call the same code. Functions are pure (numpy/scipy only, no
randomness, no state) and validate their arguments: a bad one raises ``ValueError`` naming the
argument, its value and the rule. Numbers copied from THEORY.md (Monte Carlo references, not
formulas) are labelled as reference data.

Notation: M workers, N updates, tau = staleness (updates applied between a worker's read and its
own update), H_n = sum_{i=1..n} 1/i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import digamma, logsumexp

__all__ = [
    "harmonic",
    # C1 fixed delay
    "critical_step", "delayed_gd_is_stable", "divergence_period",
    # C2 staleness in a parameter server
    "async_staleness_mean", "per_worker_staleness_mean", "update_shares",
    "geometric_staleness_pmf", "geometric_staleness_pmf_rates", "geometric_staleness_var",
    "little_identity_lhs_rhs", "SHIFTED_EXP_STALENESS_VAR_REFERENCE",
    "SHIFTED_EXP_STALENESS_VAR_SHIFT", "SHIFTED_EXP_STALENESS_VAR_RTOL",
    # C3 implicit momentum
    "implicit_momentum", "momentum_mean_recursion", "momentum_char_poly_roots",
    # C4 Dutta et al.
    "DUTTA_VARIANTS", "dutta_time_per_iteration", "dutta_error_floor",
    # C5 softsync
    "softsync_updates_per_gradient", "softsync_mean_staleness", "staleness_inverse_step",
    # C6 DC-ASGD
    "dc_asgd_compensated", "dc_asgd_adaptive_lambda",
    # C8 SSP
    "ssp_max_clock_gap", "ssp_periodic_throughput", "async_throughput",
    "SSP_EXP_THROUGHPUT_REFERENCE",
    # C10 backup workers
    "backup_workers_expected_time", "expected_order_statistic_exponential",
    # C11 EASGD and local SGD
    "easgd_exchange", "easgd_sync_contraction", "easgd_sync_stable",
    "local_sgd_drift_fixed_point",
    # C12 throughput and lock contention
    "sync_throughput", "expected_max_exponential", "closed_queue_lock", "mva_lock",
    "open_mm1_lock_wait", "deterministic_hold_throughput_bound",
]


# --- argument checks: every message names the argument, the value and the rule --------------

def _int(name: str, value: object, minimum: int = 0) -> int:
    # bool is an int subclass; True as a worker count is always a bug.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} = {value!r}: must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name} = {value}: must be an integer >= {minimum}")
    return int(value)


def _real(name: str, value: object, *, low: float | None = None, strict: bool = True) -> float:
    """A finite float, optionally > low (strict) or >= low."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r}: must be a real number") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} = {value!r}: must be finite")
    if low is not None and (x <= low if strict else x < low):
        raise ValueError(f"{name} = {value!r}: must be {'>' if strict else '>='} {low}")
    return x


def _positive_vector(name: str, values: ArrayLike) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} = {values!r}: must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{name} = {values!r}: every entry must be finite and > 0")
    return a


def harmonic(n: int) -> float:
    """H_n = sum_{i=1..n} 1/i, with H_0 = 0: the mean of the max of n Exp(1) variables."""
    n = _int("n", n, 0)
    # Exact summation while it is cheap; digamma(n+1) + Euler's gamma is exact in the limit and
    # accurate to ~1e-16 relative for large n, where a Python sum would be slow.
    if n <= 10_000:
        return math.fsum(1.0 / i for i in range(1, n + 1))
    return float(digamma(n + 1) + np.euler_gamma)


# --- C1 fixed delay on a quadratic (Levin & May 1976) ----------------------------------------

def critical_step(tau: int, lam_max: float = 1.0) -> float:
    """Largest stable step of delayed GD w_{k+1} = w_k - eta grad f(w_{k-tau}) on a quadratic.

    Each Hessian mode with eigenvalue lam obeys x_{k+1} = x_k - a x_{k-tau}, a = eta*lam, stable
    iff 0 < a < 2 sin(pi / (2(2 tau + 1))) (Levin & May 1976). tau = 0 gives plain GD's 2/lam.
    """
    tau = _int("tau", tau, 0)
    lam_max = _real("lam_max", lam_max, low=0.0)
    return 2.0 * math.sin(math.pi / (2 * (2 * tau + 1))) / lam_max


def delayed_gd_is_stable(eta: float, lam: float, tau: int) -> bool:
    """Whether delayed GD with step eta, curvature lam and fixed delay tau converges.

    Computed from the characteristic polynomial z^{tau+1} - z^tau + eta*lam (spectral radius
    < 1), not from the closed form, so it can cross-check :func:`critical_step`. At exactly the
    critical step the radius is 1 up to rounding; the answer there is arbitrary.
    """
    a = _real("eta", eta) * _real("lam", lam)
    tau = _int("tau", tau, 0)
    coeffs = np.zeros(tau + 2)
    coeffs[0] = 1.0
    coeffs[1] -= 1.0
    coeffs[-1] += a  # for tau = 0 this is the same slot as -1: z - 1 + a
    return bool(np.max(np.abs(np.roots(coeffs))) < 1.0)


def divergence_period(tau: int) -> int:
    """Period, in updates, of the mode that diverges first: 2(2 tau + 1).

    At the critical step the roots sit at exp(+-i pi/(2 tau + 1)) (Levin & May 1976).
    """
    return 2 * (2 * _int("tau", tau, 0) + 1)


# --- C2 staleness in a parameter server ------------------------------------------------------

def async_staleness_mean(M: int) -> float:
    """Mean staleness of pure async SGD with M workers: M - 1, for any compute distribution.

    Little's law over versions: each worker always has one job in flight, so on average M - 1
    other updates land while a gradient is computed (exact identity: little_identity_lhs_rhs).
    """
    return float(_int("M", M, 1) - 1)


def per_worker_staleness_mean(mean_compute: Sequence[float]) -> np.ndarray:
    """E[tau_i] = m_i * sum_{j != i} 1/m_j: worker i sees the others' update rate for m_i."""
    m = _positive_vector("mean_compute", mean_compute)
    rates = 1.0 / m
    return m * (rates.sum() - rates)


def update_shares(mean_compute: Sequence[float]) -> np.ndarray:
    """Fraction of all updates made by worker i: (1/m_i) / sum_j 1/m_j (renewal rates)."""
    rates = 1.0 / _positive_vector("mean_compute", mean_compute)
    return rates / rates.sum()


def geometric_staleness_pmf(M: int, kmax: int) -> np.ndarray:
    """P(tau = k) = (1/M)(1 - 1/M)^k for k = 0..kmax: M equal-rate exponential workers.

    By memorylessness each update is the tagged worker's with probability 1/M, so the number of
    other updates before its own is geometric on {0, 1, ...}.
    """
    M = _int("M", M, 1)
    k = np.arange(_int("kmax", kmax, 0) + 1)
    return (1.0 / M) * (1.0 - 1.0 / M) ** k


def geometric_staleness_pmf_rates(rates: Sequence[float], worker: int, kmax: int) -> np.ndarray:
    """Staleness pmf of one worker among exponential workers with unequal rates r_i.

    Geometric with success probability p_i = r_i / sum_j r_j: each next update comes from worker
    i with that probability (competing exponentials).
    """
    r = _positive_vector("rates", rates)
    worker = _int("worker", worker, 0)
    if worker >= r.size:
        raise ValueError(f"worker = {worker}: must be < len(rates) = {r.size}")
    p = r[worker] / r.sum()
    k = np.arange(_int("kmax", kmax, 0) + 1)
    return p * (1.0 - p) ** k


def geometric_staleness_var(M: int) -> float:
    """Variance of Geometric(1/M) staleness on {0, 1, ...}: (1-p)/p^2 = M(M-1)."""
    M = _int("M", M, 1)
    return float(M * (M - 1))


def little_identity_lhs_rhs(
    staleness: ArrayLike, in_flight_read_versions: ArrayLike, M: int, N: int
) -> tuple[float, float]:
    """Both sides of the exact staleness identity: sum_k (tau_k+1) + sum_j (N - r_j) = M N.

    Pure async, one gradient per update, each worker pulls at the instant of its own update and
    all start at version 0: worker i's jobs tile versions 0..N, so each worker contributes N. The
    identity holds after any finite N, for any compute distribution; a pull latency (read taken
    later) lowers the left side. Returns (lhs, rhs) so a check can report both.
    """
    M, N = _int("M", M, 1), _int("N", N, 0)
    tau = np.asarray(staleness, dtype=float).ravel()
    reads = np.asarray(in_flight_read_versions, dtype=float).ravel()
    if tau.size != N:
        raise ValueError(f"staleness has {tau.size} entries: must have N = {N} (one per update)")
    if reads.size > M:
        raise ValueError(f"in_flight_read_versions has {reads.size} entries: must be <= M = {M}")
    if np.any(tau < 0) or np.any(reads < 0) or np.any(reads > N):
        raise ValueError("staleness must be >= 0 and in-flight read versions in [0, N]")
    return float(np.sum(tau + 1.0) + np.sum(N - reads)), float(M * N)


# Reference data (THEORY.md C2), not a formula: Monte Carlo Var[tau] of pure async with compute
# time Delta + Exp(mean b), Delta = 1, keyed by (b, M); accurate to about 3 %.
SHIFTED_EXP_STALENESS_VAR_SHIFT = 1.0
SHIFTED_EXP_STALENESS_VAR_RTOL = 0.03
SHIFTED_EXP_STALENESS_VAR_REFERENCE: dict[tuple[float, int], float] = {
    (0.2, 2): 0.170, (0.2, 4): 0.666, (0.2, 8): 2.33, (0.2, 16): 8.36,
    (1.0, 2): 0.612, (1.0, 4): 3.37, (1.0, 8): 14.8, (1.0, 16): 61.9,
}


# --- C3 asynchrony begets momentum (Mitliagkas, Zhang, Hadjis, Re 2016, arXiv:1605.09774) ----

def implicit_momentum(M: int) -> float:
    """Momentum q = 1 - 1/M that Geometric(1/M) staleness induces on the expected iterate."""
    return 1.0 - 1.0 / _int("M", M, 1)


def momentum_mean_recursion(
    alpha: float, lam: float, M: int, steps: int, w0: float = 1.0, *, w_prev: float | None = None
) -> np.ndarray:
    """Expected iterate of async SGD on f = lam w^2/2 with M equal-rate exponential workers.

    mean_{t+1} = mean_t + mu (mean_t - mean_{t-1}) - k mean_t, mu = 1 - 1/M, k = alpha lam / M:
    heavy ball with momentum mu and step alpha/M (Mitliagkas et al. 2016, arXiv:1605.09774).
    Returns mean_0 .. mean_steps. mean_{-1} defaults to w0 (zero initial velocity). A run in
    which every worker reads w0 at time 0 has mean_1 = (1 - alpha lam) w0 exactly; it follows
    this recursion from t = 0 with ``w_prev = w0 * (1 + alpha * lam)``.
    """
    alpha, lam = _real("alpha", alpha), _real("lam", lam)
    mu, k = implicit_momentum(M), alpha * lam / M
    steps, w0 = _int("steps", steps, 0), _real("w0", w0)
    prev = w0 if w_prev is None else _real("w_prev", w_prev)
    out = np.empty(steps + 1)
    out[0] = w0
    for t in range(steps):
        out[t + 1] = out[t] + mu * (out[t] - prev) - k * out[t]
        prev = out[t]
    return out


def momentum_char_poly_roots(alpha: float, lam: float, M: int, beta: float = 0.0) -> np.ndarray:
    """Roots of (z-1)(z-beta)(z-q) + (alpha lam / M) z^2, q = 1 - 1/M.

    The expected iterate under explicit server momentum beta and Geometric(1/M) staleness is a
    combination of root^t; it decays iff every |root| < 1. With beta = 0 one root is 0 and the
    others are those of the heavy-ball recursion (Mitliagkas et al. 2016, arXiv:1605.09774).
    """
    alpha, lam, beta = _real("alpha", alpha), _real("lam", lam), _real("beta", beta)
    q, M = implicit_momentum(M), int(M)
    cubic = np.polymul(np.polymul([1.0, -1.0], [1.0, -beta]), [1.0, -q])
    return np.roots(np.polyadd(cubic, [0.0, alpha * lam / M, 0.0, 0.0]))


# --- C4 Dutta et al. 2018, "Slow and Stale Gradients Can Win the Race" (arXiv:1803.01113) ---

DUTTA_VARIANTS = ("sync", "k_sync", "k_batch_sync", "k_async", "k_batch_async")


def dutta_time_per_iteration(
    variant: str, P: int, K: int, mu: float = 1.0, shift: float = 0.0
) -> float:
    """Expected wall time per iteration, P learners, compute X = shift + Exp(rate mu).

    sync waits for all P: E[max] = H_P/mu. k_sync waits for the K fastest, then all restart:
    the K-th order statistic (H_P - H_{P-K})/mu. k_batch_sync counts K mini-batches from
    learners that keep working until the reset: K arrivals of a rate P mu Poisson process,
    K/(P mu). k_async: memorylessness makes it equal k_sync. k_batch_async never resets, so by
    renewal-reward it takes K E[X]/P for any distribution. K is ignored by "sync".
    (Dutta, Joshi, Ghosh, Dube, Nagpurkar 2018, arXiv:1803.01113.)
    """
    if variant not in DUTTA_VARIANTS:
        raise ValueError(f"variant = {variant!r}: must be one of {', '.join(DUTTA_VARIANTS)}")
    P = _int("P", P, 1)
    K = _int("K", K, 1)
    if K > P:
        raise ValueError(f"K = {K}: must be <= P = {P} (wait for K of the P learners)")
    mu, shift = _real("mu", mu, low=0.0), _real("shift", shift, low=0.0, strict=False)
    if variant == "sync":
        return shift + harmonic(P) / mu
    if variant == "k_sync":
        return shift + (harmonic(P) - harmonic(P - K)) / mu
    if variant == "k_batch_async":
        return K * (shift + 1.0 / mu) / P
    if shift > 0.0:
        # With a shift the memoryless argument fails; THEORY.md C4 has no closed form here.
        rule = ("no simple closed form is known" if variant == "k_batch_sync"
                else "only an upper bound (<= k_sync) is known")
        raise ValueError(f"variant = {variant!r} with shift = {shift}: {rule}; use shift = 0")
    if variant == "k_batch_sync":
        return K / (P * mu)
    return (harmonic(P) - harmonic(P - K)) / mu  # k_async


def dutta_error_floor(eta: float, c: float, sigma2: float, K: int) -> float:
    """Stationary excess loss of SGD on f = c w^2/2 with gradient noise variance sigma2/K.

    w <- (1 - eta c) w - eta xi is AR(1): Var = eta^2 sigma2/K / (1 - (1 - eta c)^2), so the loss
    c Var / 2 = eta sigma2 / (2K(2 - eta c)) exactly, below Dutta et al.'s bound
    eta L sigma2 / (2cK) (arXiv:1803.01113). Needs 0 < eta c < 2 (a stationary law exists).
    """
    eta, c = _real("eta", eta, low=0.0), _real("c", c, low=0.0)
    sigma2, K = _real("sigma2", sigma2, low=0.0, strict=False), _int("K", K, 1)
    if eta * c >= 2.0:
        raise ValueError(f"eta * c = {eta * c}: must be < 2 (otherwise SGD diverges)")
    return eta * sigma2 / (2.0 * K * (2.0 - eta * c))


# --- C5 staleness-aware learning rate (Zhang, Gupta, Lian, Liu 2016, arXiv:1511.05950) -------

def _softsync_c(lam_learners: int, n: int) -> int:
    lam_learners = _int("lam_learners", lam_learners, 1)
    n = _int("n", n, 1)
    if n > lam_learners:
        raise ValueError(f"n = {n}: must be <= lam_learners = {lam_learners} (so c >= 1)")
    return lam_learners // n


def softsync_updates_per_gradient(lam_learners: int, n: int) -> int:
    """c = floor(lambda/n): the gradients n-softsync averages into one server update.

    (Name kept for callers: it is the number of gradients per update.) n = 1 waits for lambda
    gradients, n = lambda updates on every gradient (Zhang et al. 2016, arXiv:1511.05950).
    """
    return _softsync_c(lam_learners, n)


def softsync_mean_staleness(lam_learners: int, n: int) -> float:
    """Mean push-time staleness of n-softsync: (lambda - 1)/c, for any compute distribution.

    Each learner pulls right after pushing (after the update its push triggers), so its
    staleness telescopes; over all learners lambda V - V per V updates of c gradients each.
    """
    c = _softsync_c(lam_learners, n)
    return (int(lam_learners) - 1) / c


def staleness_inverse_step(alpha0: float, tau: ArrayLike) -> float | np.ndarray:
    """alpha(tau) = alpha0 / tau, alpha0 at tau = 0 (Zhang et al. 2016, arXiv:1511.05950).

    Accepts a scalar or an array of staleness values (whole numbers >= 0, int or float dtype).
    """
    alpha0 = _real("alpha0", alpha0, low=0.0)
    raw = np.asarray(tau)
    t = raw.astype(float) if raw.dtype != bool and np.issubdtype(raw.dtype, np.number) else None
    if t is None or not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t != np.floor(t)):
        raise ValueError(f"tau = {tau!r}: must be whole number(s) >= 0 (staleness)")
    out = alpha0 / np.maximum(t, 1.0)  # max(tau, 1) gives alpha0 at tau = 0
    return float(out) if out.ndim == 0 else out


# --- C6 DC-ASGD (Zheng et al., ICML 2017, arXiv:1609.08326) ---------------------------------

def dc_asgd_compensated(
    g: ArrayLike, w: ArrayLike, w_bak: ArrayLike, lam: ArrayLike
) -> np.ndarray:
    """Delay-compensated gradient g + lam g*g*(w - w_bak) (elementwise).

    A first-order Taylor step from the parameters the worker read (w_bak) to the current w, with
    the Hessian approximated by lam times the diagonal outer product g*g (Zheng et al. 2017).
    """
    g, w, w_bak = (np.asarray(x, dtype=float) for x in (g, w, w_bak))
    if not g.shape == w.shape == w_bak.shape:
        raise ValueError(f"g, w, w_bak shapes {g.shape}, {w.shape}, {w_bak.shape}: must match")
    lam_a = np.asarray(lam, dtype=float)
    if np.any(lam_a < 0) or not np.all(np.isfinite(lam_a)):
        raise ValueError(f"lam = {lam!r}: must be finite and >= 0 (compensation strength)")
    return g + lam_a * g * g * (w - w_bak)


def dc_asgd_adaptive_lambda(lam0: float, mean_square: ArrayLike) -> np.ndarray:
    """DC-ASGD-a strength lam0 / sqrt(MeanSquare + 1e-7), MeanSquare an EMA of g*g.

    Scaling by the gradient's RMS keeps lam g*g comparable across layers and over training
    (Zheng et al. 2017, arXiv:1609.08326); 1e-7 guards against division by zero.
    """
    lam0 = _real("lam0", lam0, low=0.0, strict=False)
    ms = np.asarray(mean_square, dtype=float)
    if np.any(ms < 0) or not np.all(np.isfinite(ms)):
        raise ValueError(f"mean_square = {mean_square!r}: must be finite and >= 0 (an EMA of g*g)")
    return lam0 / np.sqrt(ms + 1e-7)


# --- C8 stale synchronous parallel (Ho et al., NeurIPS 2013) --------------------------------

def ssp_max_clock_gap(s: int) -> int:
    """Largest clock gap SSP allows, counted at commit: s + 1 (Ho et al. 2013).

    A worker starts clock c only if c - min clock <= s; committing takes it to c + 1.
    """
    return _int("s", s, 0) + 1


def ssp_periodic_throughput(periods: Sequence[float], s: int | None) -> float:
    """Long-run commits per unit time of SSP with fixed per-worker periods T_i (Ho et al. 2013).

    Any finite bound s eventually holds every worker to the slowest one's pace, P / max T;
    s = None (no bound, pure async) lets each run free: sum_i 1/T_i.
    """
    T = _positive_vector("periods", periods)
    if s is None:
        return float(np.sum(1.0 / T))
    _int("s", s, 0)
    return T.size / float(T.max())


def async_throughput(mean_compute: Sequence[float]) -> float:
    """Updates per unit time of pure async with no server bottleneck: sum_i 1/m_i."""
    return float(np.sum(1.0 / _positive_vector("mean_compute", mean_compute)))


# Reference data (THEORY.md C8), P = 8 workers, Exp(1) compute: throughput against s. s = 0 is
# BSP, P/H_P exactly; the rest are Monte Carlo values from the doc.
SSP_EXP_THROUGHPUT_REFERENCE: dict[int, float] = {
    0: 8 / harmonic(8), 1: 4.47, 2: 5.29, 4: 6.17, 8: 6.89, 32: 7.65,
}


# --- C10 backup workers (Chen, Pan, Monga, Bengio, Jozefowicz 2016, arXiv:1604.00981) --------

def expected_order_statistic_exponential(k: int, n: int, mu: float = 1.0) -> float:
    """E of the k-th smallest of n i.i.d. Exp(mu): (H_n - H_{n-k})/mu (Renyi's spacings)."""
    n = _int("n", n, 1)
    k = _int("k", k, 1)
    if k > n:
        raise ValueError(f"k = {k}: must be <= n = {n}")
    return (harmonic(n) - harmonic(n - k)) / _real("mu", mu, low=0.0)


def backup_workers_expected_time(N: int, b: int, mu: float = 1.0) -> float:
    """N + b workers, aggregate the first N: E[X_{N:N+b}] = (H_{N+b} - H_b)/mu (Chen et al.)."""
    N, b = _int("N", N, 1), _int("b", b, 0)
    return expected_order_statistic_exponential(N, N + b, mu)


# --- C11 EASGD (Zhang, Choromanska, LeCun 2015, arXiv:1412.6651) and local SGD ---------------

def easgd_exchange(
    x_i: ArrayLike, center: ArrayLike, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Async elastic exchange: delta = alpha (x_i - center); x_i -= delta; center += delta.

    The same delta moves in opposite directions, so x_i + center is conserved (up to rounding;
    exactly when the arithmetic is exact). The pair's difference is scaled by 1 - 2 alpha, hence
    0 <= alpha <= 1 (Zhang, Choromanska, LeCun 2015, arXiv:1412.6651).
    """
    alpha = _real("alpha", alpha, low=0.0, strict=False)
    if alpha > 1.0:
        raise ValueError(f"alpha = {alpha}: must be in [0, 1] (moving rate; |1 - 2 alpha| <= 1)")
    x, c = np.asarray(x_i, dtype=float), np.asarray(center, dtype=float)
    if x.shape != c.shape:
        raise ValueError(f"x_i shape {x.shape} and center shape {c.shape}: must match")
    delta = alpha * (x - c)
    return x - delta, c + delta


def easgd_sync_contraction(alpha: float, beta: float) -> tuple[float, float]:
    """Factors of synchronous elastic averaging: worker differences (1 - alpha), mean-minus-center
    (1 - alpha - beta); the consensus mode has factor 1 (Zhang et al. 2015, arXiv:1412.6651)."""
    alpha, beta = _real("alpha", alpha), _real("beta", beta)
    return 1.0 - alpha, 1.0 - alpha - beta


def easgd_sync_stable(alpha: float, beta: float) -> bool:
    """Both elastic modes contract: 0 < alpha < 2 and 0 < alpha + beta < 2."""
    a, b = easgd_sync_contraction(alpha, beta)
    return abs(a) < 1.0 and abs(b) < 1.0


def local_sgd_drift_fixed_point(
    lams: Sequence[float], cs: Sequence[float], eta: float, H: int
) -> float:
    """Where local GD with averaging settles on f_i = lam_i (w - c_i)^2 / 2: client drift.

    H local steps map w to c_i + a_i (w - c_i), a_i = (1 - eta lam_i)^H; averaging then has the
    fixed point sum c_i (1 - a_i) / sum (1 - a_i), which is the optimum sum lam_i c_i / sum lam_i
    only for H = 1 (or equal lam_i). Converges iff |mean a_i| < 1.
    """
    lam = _positive_vector("lams", lams)
    c = np.asarray(cs, dtype=float)
    if c.shape != lam.shape or not np.all(np.isfinite(c)):
        raise ValueError(f"cs = {cs!r}: must be finite with one entry per lams ({lam.size})")
    eta, H = _real("eta", eta, low=0.0), _int("H", H, 1)
    a = (1.0 - eta * lam) ** H
    if abs(a.mean()) >= 1.0:
        raise ValueError(f"eta = {eta}, H = {H}: mean (1 - eta lam_i)^H = {a.mean():.6g}; "
                         "must be in (-1, 1) for local GD with averaging to converge")
    return float(np.sum(c * (1.0 - a)) / np.sum(1.0 - a))


# --- C12 throughput and lock contention -----------------------------------------------------

def sync_throughput(M: int, mean_max_time: float) -> float:
    """Gradients per unit time of synchronous rounds: M / E[max_i T_i]."""
    return _int("M", M, 1) / _real("mean_max_time", mean_max_time, low=0.0)


def expected_max_exponential(rates: Sequence[float]) -> float:
    """E[max_i T_i], T_i ~ Exp(r_i) independent, by inclusion-exclusion over subsets.

    P(max > t) = 1 - prod(1 - e^{-r_i t}); expanding and integrating gives
    sum_{nonempty S} (-1)^{|S|+1} / sum_{i in S} r_i. 2^n terms with cancellation, so n <= 20.
    """
    r = _positive_vector("rates", rates)
    if r.size > 20:
        raise ValueError(f"len(rates) = {r.size}: must be <= 20 (2^n inclusion-exclusion terms)")
    # Subset sums and sizes built by doubling: subsets without rate i, then with it.
    sums, sizes = np.zeros(1), np.zeros(1, dtype=int)
    for ri in r:
        sums = np.concatenate([sums, sums + ri])
        sizes = np.concatenate([sizes, sizes + 1])
    signs = np.where(sizes[1:] % 2 == 1, 1.0, -1.0)
    return float(math.fsum(signs / sums[1:]))


def _lock_result(M: int, X: float, Z: float, S: float, p0: float) -> dict[str, float]:
    wait = M / X - Z - S  # Little's law on the whole cycle: M = X (Z + Wq + S)
    # "X" and "Wq" alias "throughput" and "wait" with THEORY.md's symbols.
    return {"p0": p0, "throughput": X, "wait": wait, "utilization": X * S, "X": X, "Wq": wait}


def closed_queue_lock(M: int, think_time: float, hold_time: float) -> dict[str, float]:
    """A server lock as a closed queue (machine repairman), not an open M/M/1.

    M workers think (compute + network) for mean Z, then hold the lock for Exp(mean S). With
    r = S/Z: p0 = [sum_{n=0..M} M!/(M-n)! r^n]^-1 (lock idle), X = (1-p0)/S, Wq = M/X - Z - S.
    Insensitive to the think-time distribution. Terms are summed in logs, so M = 10^4 is fine.
    Keys: p0, throughput (X), wait (Wq), utilization (= 1 - p0).
    """
    M = _int("M", M, 1)
    Z, S = _real("think_time", think_time, low=0.0), _real("hold_time", hold_time, low=0.0)
    # log of M!/(M-n)! r^n = sum_{j<n} log((M-j) r); n = 0 contributes log 1 = 0.
    log_terms = np.concatenate([[0.0], np.cumsum(np.log((M - np.arange(M)) * (S / Z)))])
    log_norm = float(logsumexp(log_terms))
    p0 = math.exp(-log_norm)
    busy = -math.expm1(-log_norm)  # 1 - p0 without cancellation at light load
    return _lock_result(M, busy / S, Z, S, p0)


def mva_lock(M: int, think_time: float, hold_time: float) -> dict[str, float]:
    """Exact Mean Value Analysis of the same closed network: delay Z, one FCFS queue S.

    Adding customers one at a time: an arrival sees the queue of the network with one customer
    fewer (arrival theorem), R(n) = S (1 + Q(n-1)), X(n) = n / (Z + R(n)), Q(n) = X(n) R(n).
    Same keys as :func:`closed_queue_lock`; think_time = 0 is allowed here.
    """
    M = _int("M", M, 1)
    Z = _real("think_time", think_time, low=0.0, strict=False)
    S = _real("hold_time", hold_time, low=0.0)
    Q = 0.0
    for n in range(1, M + 1):
        R = S * (1.0 + Q)
        X = n / (Z + R)
        Q = X * R
    return _lock_result(M, X, Z, S, 1.0 - X * S)


def open_mm1_lock_wait(arrival_rate: float, hold_time: float) -> float:
    """Wq = rho S / (1 - rho), rho = arrival_rate * S: the WRONG (open M/M/1) lock model.

    Kept for contrast in plots: it ignores that a waiting worker stops generating requests, so it
    blows up (inf for rho >= 1) where the closed queue saturates at X = 1/S.
    """
    lam = _real("arrival_rate", arrival_rate, low=0.0, strict=False)
    S = _real("hold_time", hold_time, low=0.0)
    rho = lam * S
    return math.inf if rho >= 1.0 else rho * S / (1.0 - rho)


def deterministic_hold_throughput_bound(M: int, think_time: float, hold_time: float) -> float:
    """Asymptotic bound X <= min(M/(Z+S), 1/S): no waiting, or the lock always busy.

    Holds for any distributions; deterministic think and hold times with staggered starts
    attain it.
    """
    M = _int("M", M, 1)
    Z = _real("think_time", think_time, low=0.0, strict=False)
    S = _real("hold_time", hold_time, low=0.0)
    return min(M / (Z + S), 1.0 / S)
