"""Analytic ground truth (THEORY.md C1-C12): each closed form in asgd_sim.theory against an
independent computation (quadrature, bisection, a small numpy simulation, exact arithmetic) or
a value printed in THEORY.md, never against a number produced by the code under test."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from asgd_sim.validation import theory as th

# --- small independent simulators (plain numpy / heapq) --------------------------------------


def simulate_async(
    sampler: Callable[[np.random.Generator, int], float], M: int, n_updates: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure async parameter server: each worker reads the version at its own update instant.

    Returns (staleness per update, worker per update, read versions of the M in-flight jobs).
    """
    rng = np.random.default_rng(seed)
    heap = [(sampler(rng, i), i) for i in range(M)]
    heapq.heapify(heap)
    read = np.zeros(M, dtype=np.int64)
    stale = np.empty(n_updates, dtype=np.int64)
    who = np.empty(n_updates, dtype=np.int64)
    for v in range(n_updates):
        now, i = heapq.heappop(heap)
        stale[v], who[v] = v - read[i], i
        read[i] = v + 1  # pull right after own update
        heapq.heappush(heap, (now + sampler(rng, i), i))
    return stale, who, read


def simulate_ssp(
    sampler: Callable[[np.random.Generator, int], float], P: int, s: int, commits: int, seed: int
) -> tuple[float, int]:
    """SSP: a worker at clock c may start only if c - min clock <= s. Returns (rate, max gap)."""
    rng = np.random.default_rng(seed)
    clock = np.zeros(P, dtype=np.int64)
    heap = [(sampler(rng, i), i) for i in range(P)]
    heapq.heapify(heap)
    waiting: list[int] = []
    max_gap, now = 0, 0.0
    for _ in range(commits):
        now, i = heapq.heappop(heap)
        clock[i] += 1
        max_gap = max(max_gap, int(clock.max() - clock.min()))
        waiting.append(i)
        low = clock.min()
        for j in sorted(waiting):
            if clock[j] - low <= s:
                waiting.remove(j)
                heapq.heappush(heap, (now + sampler(rng, j), j))
    return commits / now, max_gap


# --- harmonic numbers ------------------------------------------------------------------------


def test_harmonic_exact_and_asymptotic():
    for n in range(0, 60):
        exact = sum((Fraction(1, i) for i in range(1, n + 1)), Fraction(0))
        assert th.harmonic(n) == pytest.approx(float(exact), rel=1e-15, abs=0)
    for n in (10_000, 10_001, 10**6):  # both code paths, against the Euler-Maclaurin expansion
        asym = math.log(n) + np.euler_gamma + 1 / (2 * n) - 1 / (12 * n**2) + 1 / (120 * n**4)
        assert th.harmonic(n) == pytest.approx(asym, rel=1e-14)


# --- C1 fixed delay ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tau,value",
    [(0, 2.0), (1, 1.0), (2, 0.618034), (3, 0.445042), (7, 0.209057), (15, 0.101298),
     (31, 0.049861)],
)
def test_critical_step_table(tau, value):
    assert th.critical_step(tau) == pytest.approx(value, abs=1e-6)
    assert th.critical_step(tau, lam_max=4.0) == pytest.approx(value / 4.0, abs=1e-6)


def _delay_radius(a: float, tau: int) -> float:
    """Spectral radius of the companion matrix of x_{k+1} = x_k - a x_{k-tau}."""
    A = np.zeros((tau + 1, tau + 1))
    A[0, 0] += 1.0
    A[0, tau] -= a
    A[1:, :-1] += np.eye(tau)
    return float(np.max(np.abs(np.linalg.eigvals(A))))


@pytest.mark.parametrize("tau", [0, 1, 2, 3, 5, 10])
def test_critical_step_is_bisected_stability_edge(tau):
    lo, hi = 1e-3, 2.5
    assert _delay_radius(lo, tau) < 1 < _delay_radius(hi, tau)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _delay_radius(mid, tau) < 1 else (lo, mid)
    assert th.critical_step(tau) == pytest.approx(lo, abs=1e-7)


@pytest.mark.parametrize("tau", range(0, 13))
@pytest.mark.parametrize("lam", [1.0, 3.0])
def test_delayed_gd_is_stable_brackets_edge(tau, lam):
    edge = 2 * math.sin(math.pi / (2 * (2 * tau + 1))) / lam
    assert th.delayed_gd_is_stable(0.99 * edge, lam, tau)
    assert not th.delayed_gd_is_stable(1.01 * edge, lam, tau)
    assert not th.delayed_gd_is_stable(0.0, lam, tau)  # a = 0 leaves the mode at z = 1
    assert not th.delayed_gd_is_stable(-0.1, lam, tau)


def _delayed_gd(a: float, tau: int, steps: int) -> np.ndarray:
    w = np.ones(steps + tau + 1)  # history w_{-tau} .. w_0 = 1
    for k in range(tau, steps + tau):
        w[k + 1] = w[k] - a * w[k - tau]
    return w[tau:]


@pytest.mark.parametrize("tau", [1, 3, 7])
def test_delayed_gd_simulated_decays_grows_and_oscillates(tau):
    a_c = th.critical_step(tau)
    horizon = 50 * (2 * tau + 1)  # THEORY.md C1: 10x growth within ~50(2 tau + 1) updates
    assert np.max(np.abs(_delayed_gd(0.9 * a_c, tau, 4 * horizon)[-horizon:])) < 0.1
    assert np.max(np.abs(_delayed_gd(1.1 * a_c, tau, horizon))) > 10
    # Just above the edge the growing mode dominates; count its sign changes.
    tail = _delayed_gd(1.02 * a_c, tau, 40 * horizon)[-20 * horizon:]
    crossings = np.count_nonzero(np.diff(np.sign(tail)) != 0)
    assert 2 * tail.size / crossings == pytest.approx(th.divergence_period(tau), rel=0.03)


# --- C2 staleness distribution ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's skewness at p = 1 (M = 1)
@pytest.mark.parametrize("M", [1, 2, 5, 16])
def test_geometric_pmf_against_scipy(M):
    k = np.arange(400 * M)
    pmf = th.geometric_staleness_pmf(M, k[-1])
    geom = stats.geom(1.0 / M, loc=-1)  # support {0, 1, ...}
    np.testing.assert_allclose(pmf, geom.pmf(k), rtol=1e-12, atol=1e-300)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.sum(k * pmf) == pytest.approx(geom.mean(), rel=1e-9, abs=1e-12)
    assert th.async_staleness_mean(M) == pytest.approx(geom.mean(), abs=1e-12)
    assert th.geometric_staleness_var(M) == pytest.approx(geom.var(), rel=1e-12, abs=1e-12)
    assert np.sum(k**2 * pmf) - np.sum(k * pmf) ** 2 == pytest.approx(geom.var(), rel=1e-8,
                                                                     abs=1e-12)


def test_geometric_pmf_rates_against_scipy():
    rates = [1.0, 2.0, 5.0]
    for i, r in enumerate(rates):
        p = r / sum(rates)
        np.testing.assert_allclose(th.geometric_staleness_pmf_rates(rates, i, 30),
                                   stats.geom(p, loc=-1).pmf(np.arange(31)), rtol=1e-12)
    np.testing.assert_allclose(th.geometric_staleness_pmf_rates([3.0] * 4, 2, 20),
                               stats.geom(0.25, loc=-1).pmf(np.arange(21)), rtol=1e-12)


def test_async_exponential_monte_carlo_matches_per_worker_theory():
    means = np.array([1.0, 2.0, 4.0])
    n = 60_000
    stale, who, reads = simulate_async(lambda rng, i: rng.exponential(means[i]), 3, n, seed=1)
    predicted = [0.75, 2.5, 6.0]  # m_i * sum_{j != i} 1/m_j by hand
    np.testing.assert_allclose(th.per_worker_staleness_mean(means), predicted, rtol=1e-12)
    for i in range(3):
        assert stale[who == i].mean() == pytest.approx(predicted[i], rel=0.04)
    shares = np.bincount(who, minlength=3) / n
    np.testing.assert_allclose(th.update_shares(means), shares, atol=0.01)
    assert stale.mean() == pytest.approx(th.async_staleness_mean(3), rel=0.02)
    for i in range(3):  # worker i's staleness is geometric with p_i = r_i / sum r
        hist = np.bincount(stale[who == i], minlength=12)[:12] / np.count_nonzero(who == i)
        pmf = th.geometric_staleness_pmf_rates(1.0 / means, i, 11)
        np.testing.assert_allclose(hist, pmf, atol=0.015)
    lhs, rhs = th.little_identity_lhs_rhs(stale, reads, 3, n)
    assert lhs == rhs == 3 * n


@pytest.mark.parametrize("M,n", [(1, 10), (4, 1), (4, 137), (7, 5000)])
def test_little_identity_is_exact_for_any_distribution(M, n):
    sampler = lambda rng, i: rng.lognormal(0.0, 1.0) * (i + 1)  # noqa: E731
    stale, _, reads = simulate_async(sampler, M, n, seed=M + n)
    lhs, rhs = th.little_identity_lhs_rhs(stale, reads, M, n)
    assert lhs == rhs == M * n
    # A pull that reads a later version (pull latency) lowers the left side.
    lhs_late, _ = th.little_identity_lhs_rhs(stale, np.minimum(reads + 1, n), M, n)
    assert lhs_late < rhs or np.all(reads == n)


def test_weighted_per_worker_means_give_m_minus_one():
    m = np.array([0.3, 1.0, 1.0, 7.5, 2.0])
    shares = th.update_shares(m)
    assert shares.sum() == pytest.approx(1.0)
    assert np.dot(shares, th.per_worker_staleness_mean(m)) == pytest.approx(len(m) - 1)


@pytest.mark.parametrize("key", [(0.2, 4), (1.0, 4), (1.0, 8)])
def test_shifted_exponential_reference_variance_by_monte_carlo(key):
    b, M = key
    delta = th.SHIFTED_EXP_STALENESS_VAR_SHIFT
    stale, _, _ = simulate_async(lambda rng, i: delta + rng.exponential(b), M, 60_000, seed=7)
    assert stale[1000:].var() == pytest.approx(th.SHIFTED_EXP_STALENESS_VAR_REFERENCE[key],
                                               rel=0.06)
    assert stale.mean() == pytest.approx(M - 1, rel=0.01)


# --- C3 implicit momentum ----------------------------------------------------------------------


@pytest.mark.parametrize("M", [2, 4, 16])
def test_implicit_momentum_is_geometric_ratio(M):
    pmf = stats.geom(1.0 / M, loc=-1).pmf(np.arange(10))
    np.testing.assert_allclose(pmf[1:] / pmf[:-1], th.implicit_momentum(M), rtol=1e-12)


@pytest.mark.parametrize("alpha,lam,M", [(0.1, 1.0, 4), (0.5, 2.0, 8), (1.5, 1.0, 2)])
def test_recursion_decay_rate_equals_largest_root(alpha, lam, M):
    m = th.momentum_mean_recursion(alpha, lam, M, 600)
    state = np.hypot(m[1:], m[:-1])  # bounded oscillation between two roots of equal modulus
    rate = (state[-1] / state[-501]) ** (1 / 500)
    roots = th.momentum_char_poly_roots(alpha, lam, M)
    assert rate == pytest.approx(np.max(np.abs(roots)), rel=5e-3)
    assert np.min(np.abs(roots)) < 1e-12  # beta = 0 gives a root at 0
    # The whole sequence is A z1^t + B z2^t with the two nonzero roots.
    z = roots[np.argsort(np.abs(roots))[1:]]
    t = np.arange(60)
    basis = np.stack([z[0] ** t, z[1] ** t], axis=1)
    coef = np.linalg.lstsq(basis[:2], m[:2].astype(complex), rcond=None)[0]
    np.testing.assert_allclose((basis @ coef).real, m[:60], atol=1e-10)


def _async_quadratic_means(alpha, lam, M, steps, R, beta, seed):
    """R replications of noise-free async SGD (+ server momentum beta) on f = lam w^2 / 2 with
    M equal-rate exponential workers: each update comes from a uniformly random worker."""
    rng = np.random.default_rng(seed)
    w, v = np.ones(R), np.zeros(R)
    reads = np.ones((R, M))
    means = [w.mean()]
    for _ in range(steps):
        j = rng.integers(M, size=R)
        v = beta * v - alpha * lam * reads[np.arange(R), j]
        w = w + v
        reads[np.arange(R), j] = w
        means.append(w.mean())
    return np.array(means)


def test_mean_iterate_follows_momentum_recursion_monte_carlo():
    alpha, lam, M = 0.3, 1.0, 4
    mc = _async_quadratic_means(alpha, lam, M, 40, R=20_000, beta=0.0, seed=3)
    assert mc[1] == pytest.approx(1 - alpha * lam, abs=1e-12)  # everyone read w0
    pred = th.momentum_mean_recursion(alpha, lam, M, 40, w_prev=1 + alpha * lam)
    np.testing.assert_allclose(mc, pred, atol=0.01)
    default = th.momentum_mean_recursion(alpha, lam, M, 40)  # mean_{-1} = w0
    assert abs(default[1] - mc[1]) > 0.1


def test_server_momentum_mean_is_combination_of_cubic_roots():
    alpha, lam, M, beta = 0.2, 1.0, 4, 0.5
    mc = _async_quadratic_means(alpha, lam, M, 50, R=40_000, beta=beta, seed=4)
    roots = th.momentum_char_poly_roots(alpha, lam, M, beta=beta)
    t = np.arange(mc.size)
    basis = np.stack([r**t for r in roots], axis=1)
    coef = np.linalg.lstsq(basis, mc.astype(complex), rcond=None)[0]
    assert np.max(np.abs((basis @ coef).real - mc)) < 0.01
    # Negative control: the beta = 0 prediction misses the momentum run by far.
    no_beta = th.momentum_mean_recursion(alpha, lam, M, 50, w_prev=1 + alpha * lam)
    assert np.max(np.abs(no_beta - mc)) > 0.1


# --- C4 Dutta et al. ---------------------------------------------------------------------------


def _order_stat_mean_quad(k: int, n: int, mu: float) -> float:
    """E[X_(k:n)] = int_0^inf P(fewer than k of n are done by t) dt."""
    surv = lambda t: stats.binom.cdf(k - 1, n, -math.expm1(-mu * t))  # noqa: E731
    return integrate.quad(surv, 0, np.inf, limit=200)[0]


@pytest.mark.parametrize("k,n", [(1, 1), (1, 5), (3, 5), (5, 5), (4, 8), (8, 8), (50, 58)])
@pytest.mark.parametrize("mu", [1.0, 2.5])
def test_order_statistic_against_quadrature(k, n, mu):
    assert th.expected_order_statistic_exponential(k, n, mu) == pytest.approx(
        _order_stat_mean_quad(k, n, mu), rel=1e-7)


def test_dutta_sync_and_k_sync_against_quadrature():
    P, mu, shift = 8, 2.0, 0.5
    assert th.dutta_time_per_iteration("sync", P, P, mu) == pytest.approx(
        _order_stat_mean_quad(P, P, mu), rel=1e-7)
    assert th.dutta_time_per_iteration("sync", P, 1, mu, shift) == pytest.approx(
        shift + _order_stat_mean_quad(P, P, mu), rel=1e-7)
    for K in (1, 3, 8):
        assert th.dutta_time_per_iteration("k_sync", P, K, mu, shift) == pytest.approx(
            shift + _order_stat_mean_quad(K, P, mu), rel=1e-7)
        assert th.dutta_time_per_iteration("k_async", P, K, mu) == pytest.approx(
            _order_stat_mean_quad(K, P, mu), rel=1e-7)


def _k_async_monte_carlo(P, K, mu, shift, iters, seed):
    """K-async: the K earliest finishers restart after the update; the others keep computing."""
    rng = np.random.default_rng(seed)
    done = shift + rng.exponential(1 / mu, P)
    now = 0.0
    for _ in range(iters):
        first = np.argpartition(done, K - 1)[:K]
        now = done[first].max()
        done[first] = now + shift + rng.exponential(1 / mu, K)
    return now / iters


@pytest.mark.parametrize("K", [1, 4, 8])
def test_dutta_k_batch_sync_is_kth_poisson_arrival(K):
    P, mu = 8, 1.5  # merged renewal streams of P Exp(mu) learners: Poisson, rate P mu
    surv = lambda t: stats.poisson.cdf(K - 1, P * mu * t)  # noqa: E731  P(K-th arrival > t)
    assert th.dutta_time_per_iteration("k_batch_sync", P, K, mu) == pytest.approx(
        integrate.quad(surv, 0, np.inf)[0], rel=1e-8)


def test_dutta_k_variants_by_monte_carlo():
    P, mu, rng = 8, 1.5, np.random.default_rng(5)
    for K in (1, 4, 8):
        # K-batch-sync: all restart each iteration; wait for K finished batches in total.
        batches = np.cumsum(rng.exponential(1 / mu, (20_000, P, K)), axis=2).reshape(20_000, -1)
        t = np.partition(batches, K - 1, axis=1)[:, K - 1].mean()
        assert th.dutta_time_per_iteration("k_batch_sync", P, K, mu) == pytest.approx(t, rel=0.03)
        assert th.dutta_time_per_iteration("k_async", P, K, mu) == pytest.approx(
            _k_async_monte_carlo(P, K, mu, 0.0, 20_000, seed=K), rel=0.03)
    # Shifted exponential: K-async has no closed form, but stays below K-sync.
    assert _k_async_monte_carlo(P, 4, mu, 1.0, 20_000, seed=9) < th.dutta_time_per_iteration(
        "k_sync", P, 4, mu, shift=1.0)


@pytest.mark.parametrize("K", [1, 3, 8])
def test_dutta_k_batch_async_renewal_reward(K):
    P, mu, shift, rng = 8, 2.0, 0.7, np.random.default_rng(K)
    arrivals = np.sort(np.cumsum(shift + rng.exponential(1 / mu, (P, 5000)), axis=1).ravel())
    horizon = arrivals[P * 4000]  # before any learner runs out of samples
    per_iter = horizon / (np.searchsorted(arrivals, horizon, side="right") / K)
    assert th.dutta_time_per_iteration("k_batch_async", P, K, mu, shift) == pytest.approx(
        per_iter, rel=0.02)


@pytest.mark.parametrize("eta,c,sigma2,K", [(0.1, 1.0, 1.0, 1), (0.5, 2.0, 3.0, 4),
                                            (1.9, 1.0, 0.5, 8), (0.01, 10.0, 2.0, 2)])
def test_dutta_error_floor_is_ar1_stationary_loss(eta, c, sigma2, K):
    var = eta**2 * sigma2 / K / (1 - (1 - eta * c) ** 2)
    assert th.dutta_error_floor(eta, c, sigma2, K) == pytest.approx(c * var / 2, rel=1e-12)


def test_dutta_error_floor_by_simulation():
    eta, c, sigma2, rng = 0.2, 1.0, 1.0, np.random.default_rng(6)
    for K in (1, 2, 4, 8):
        w, acc = np.zeros(2000), 0.0
        for step in range(600):
            w = (1 - eta * c) * w - eta * rng.normal(0, math.sqrt(sigma2 / K), w.size)
            if step >= 200:
                acc += np.mean(c * w**2 / 2)
        assert acc / 400 == pytest.approx(th.dutta_error_floor(eta, c, sigma2, K), rel=0.03)


# --- C5 softsync -------------------------------------------------------------------------------


@pytest.mark.parametrize("lam,n", [(16, 1), (16, 3), (16, 4), (16, 16), (30, 15), (30, 30)])
def test_softsync_by_simulation(lam, n):
    """lambda learners, uniform compute; the server applies after c gradients. Push-time
    staleness; the learner whose push completes a batch reads the new version."""
    rng = np.random.default_rng(lam * 100 + n)
    heap = [(rng.uniform(0.5, 1.5), i) for i in range(lam)]
    heapq.heapify(heap)
    read, version, pending, stale, sizes = [0] * lam, 0, 0, [], []
    c = th.softsync_updates_per_gradient(lam, n)
    for _ in range(20_000):
        now, i = heapq.heappop(heap)
        stale.append(version - read[i])
        pending += 1
        if pending == c:
            version, pending = version + 1, 0
            sizes.append(c)
        read[i] = version
        heapq.heappush(heap, (now + rng.uniform(0.5, 1.5), i))
    assert c == math.floor(lam / n) >= 1
    assert np.mean(stale) == pytest.approx(th.softsync_mean_staleness(lam, n), rel=0.02, abs=0.01)


def test_staleness_inverse_step():
    assert th.staleness_inverse_step(0.1, 0) == 0.1
    assert th.staleness_inverse_step(0.1, 1) == 0.1
    assert th.staleness_inverse_step(0.1, 4) == pytest.approx(0.025)
    np.testing.assert_allclose(th.staleness_inverse_step(1.0, np.array([0, 1, 2, 8])),
                               [1.0, 1.0, 0.5, 0.125])
    np.testing.assert_allclose(th.staleness_inverse_step(1.0, np.array([0.0, 5.0])), [1.0, 0.2])
    for bad in (-1, 2.5, np.array([1, -2]), True):
        with pytest.raises(ValueError, match="tau"):
            th.staleness_inverse_step(1.0, bad)


# --- C6 DC-ASGD --------------------------------------------------------------------------------


def test_dc_asgd_elementwise_formula():
    rng = np.random.default_rng(0)
    g, w, wb, lam = rng.normal(size=(4, 7))
    lam = np.abs(lam)
    out = th.dc_asgd_compensated(g, w, wb, lam)
    for j in range(7):
        assert out[j] == pytest.approx(g[j] + lam[j] * g[j] * g[j] * (w[j] - wb[j]), rel=1e-14)
    np.testing.assert_array_equal(th.dc_asgd_compensated(g, w, w, 0.5), g)  # no delay
    np.testing.assert_array_equal(th.dc_asgd_compensated(g, w, wb, 0.0), g)
    np.testing.assert_allclose(th.dc_asgd_adaptive_lambda(2.0, [0.0, 1.0, 4.0]),
                               [2 / math.sqrt(1e-7), 2 / math.sqrt(1 + 1e-7),
                                2 / math.sqrt(4 + 1e-7)])


def test_dc_asgd_is_exact_taylor_when_hessian_is_g_squared():
    # f(w) = -log(w): g = -1/w and f'' = 1/w^2 = g*g, so lam = 1 is the true first-order Taylor
    # correction and the compensated gradient is closer to the fresh one than the stale one.
    w_bak = np.array([1.0, 2.0, 0.5])
    w = w_bak + np.array([0.05, -0.1, 0.02])
    stale, fresh = -1 / w_bak, -1 / w
    comp = th.dc_asgd_compensated(stale, w, w_bak, 1.0)
    assert np.all(np.abs(comp - fresh) < 0.1 * np.abs(stale - fresh))


# --- C8 SSP ------------------------------------------------------------------------------------


def test_ssp_periodic_throughput_values():
    for s in (0, 1, 5):
        assert th.ssp_periodic_throughput([1, 1, 2], s) == pytest.approx(1.5)
    assert th.ssp_periodic_throughput([1, 1, 2], None) == pytest.approx(2.5)
    assert th.async_throughput([1, 1, 2]) == pytest.approx(2.5)


@pytest.mark.parametrize("s", [0, 1, 3])
def test_ssp_periodic_by_simulation(s):
    periods = [1.0, 1.0, 2.0]
    rate, gap = simulate_ssp(lambda rng, i: periods[i], 3, s, 6000, seed=0)
    assert rate == pytest.approx(th.ssp_periodic_throughput(periods, s), rel=0.01)
    assert gap == th.ssp_max_clock_gap(s)
    free, _ = simulate_ssp(lambda rng, i: periods[i], 3, 10**9, 6000, seed=0)
    assert free == pytest.approx(th.ssp_periodic_throughput(periods, None), rel=0.01)


@pytest.mark.parametrize("s", [0, 1, 2])
def test_ssp_exponential_reference_by_monte_carlo(s):
    rate, gap = simulate_ssp(lambda rng, i: rng.exponential(1.0), 8, s, 25_000, seed=s)
    assert rate == pytest.approx(th.SSP_EXP_THROUGHPUT_REFERENCE[s], rel=0.04)
    assert gap <= th.ssp_max_clock_gap(s)


def test_ssp_s0_reference_is_bsp():
    assert th.SSP_EXP_THROUGHPUT_REFERENCE[0] == pytest.approx(
        th.sync_throughput(8, _order_stat_mean_quad(8, 8, 1.0)), rel=1e-7)
    assert th.SSP_EXP_THROUGHPUT_REFERENCE[0] == pytest.approx(2.94, abs=0.005)


# --- C10 backup workers ------------------------------------------------------------------------


@pytest.mark.parametrize("b,value", [(0, 4.499), (1, 3.519), (2, 3.038), (4, 2.492), (8, 1.928)])
def test_backup_workers_table_and_quadrature(b, value):
    assert th.backup_workers_expected_time(50, b) == pytest.approx(value, abs=1e-3)
    assert th.backup_workers_expected_time(50, b, mu=2.0) == pytest.approx(
        _order_stat_mean_quad(50, 50 + b, 2.0), rel=1e-7)


# --- C11 EASGD and local SGD -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(-2**20, 2**20), st.integers(-2**20, 2**20), st.integers(0, 256))
def test_easgd_exchange_conserves_sum_exactly_in_exact_arithmetic(xi, ci, ai):
    x, c, alpha = xi / 1024, ci / 1024, ai / 256  # dyadic: every operation below is exact
    nx, nc = th.easgd_exchange(np.array([x]), np.array([c]), alpha)
    assert nx[0] + nc[0] == x + c
    assert Fraction(nx[0]) == Fraction(x) - Fraction(alpha) * (Fraction(x) - Fraction(c))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2),
       st.floats(0.0, 1.0))
def test_easgd_exchange_conserves_sum_up_to_rounding(pair, alpha):
    x, c = np.array([pair[0]]), np.array([pair[1]])
    nx, nc = th.easgd_exchange(x, c, alpha)
    scale = abs(pair[0]) + abs(pair[1])
    assert abs((nx[0] + nc[0]) - (x[0] + c[0])) <= 8 * np.finfo(float).eps * scale
    # The pair's difference is scaled by |1 - 2 alpha| <= 1 (plus rounding).
    assert abs(nx[0] - nc[0]) <= abs(x[0] - c[0]) + 4 * np.finfo(float).eps * scale


@pytest.mark.parametrize("alpha,beta", [(0.1, 0.4), (0.5, 1.2), (1.5, 0.3), (0.9, 1.5),
                                        (2.2, -0.5), (0.3, 1.8)])
def test_easgd_sync_contraction_is_the_linear_map_spectrum(alpha, beta):
    p = 4  # x_i <- x_i - alpha (x_i - c); c <- c + beta (mean x - c), all from old values
    A = np.zeros((p + 1, p + 1))
    A[:p, :p] = (1 - alpha) * np.eye(p)
    A[:p, p] = alpha
    A[p, :p] = beta / p
    A[p, p] = 1 - beta
    eig = np.sort_complex(np.linalg.eigvals(A).astype(complex))
    a, b = th.easgd_sync_contraction(alpha, beta)
    expected = np.sort_complex(np.array([1.0] + [a] * (p - 1) + [b], dtype=complex))
    np.testing.assert_allclose(eig, expected, atol=1e-7)
    others = np.delete(eig, np.argmin(np.abs(eig - 1.0)))  # drop the consensus mode
    assert th.easgd_sync_stable(alpha, beta) == bool(np.all(np.abs(others) < 1))


def _local_gd_average(lams, cs, eta, H, rounds=20_000):
    w = 0.0
    for _ in range(rounds):
        local = np.full(len(lams), w)
        for _ in range(H):
            local -= eta * np.asarray(lams) * (local - np.asarray(cs))
        w_new = local.mean()
        if abs(w_new - w) < 1e-15:
            return w_new
        w = w_new
    return w


@pytest.mark.parametrize("H", [1, 2, 5, 20])
def test_local_sgd_drift_fixed_point_by_iteration(H):
    lams, cs, eta = [0.5, 1.0, 4.0], [1.0, -2.0, 3.0], 0.2
    assert th.local_sgd_drift_fixed_point(lams, cs, eta, H) == pytest.approx(
        _local_gd_average(lams, cs, eta, H), abs=1e-10)
    optimum = np.dot(lams, cs) / np.sum(lams)  # minimizer of sum_i f_i
    if H == 1:
        assert th.local_sgd_drift_fixed_point(lams, cs, eta, H) == pytest.approx(optimum)
    else:
        assert abs(th.local_sgd_drift_fixed_point(lams, cs, eta, H) - optimum) > 0.05


# --- C12 throughput and lock contention --------------------------------------------------------


@pytest.mark.parametrize("rates", [[1.0], [1.0, 2.0], [0.5, 1.0, 3.0, 7.0], [1.0] * 8,
                                   list(np.linspace(0.2, 3.0, 12))])
def test_expected_max_exponential_against_quadrature(rates):
    surv = lambda t: 1 - np.prod(-np.expm1(-np.asarray(rates) * t))  # noqa: E731
    assert th.expected_max_exponential(rates) == pytest.approx(
        integrate.quad(surv, 0, np.inf, limit=200)[0], rel=1e-8)


def test_expected_max_exponential_equal_rates_and_limit():
    assert th.expected_max_exponential([2.0] * 20) == pytest.approx(th.harmonic(20) / 2,
                                                                     rel=1e-9)
    with pytest.raises(ValueError, match="len\\(rates\\) = 21"):
        th.expected_max_exponential([1.0] * 21)
    assert th.sync_throughput(4, 2.0) == 2.0


@pytest.mark.parametrize("M", [1, 2, 3, 7, 20, 64, 1000])
@pytest.mark.parametrize("Z,S", [(1.0, 0.1), (0.3, 0.5), (5.0, 0.01)])
def test_closed_queue_equals_mva(M, Z, S):
    closed, mva = th.closed_queue_lock(M, Z, S), th.mva_lock(M, Z, S)
    assert set(closed) == set(mva) >= {"p0", "throughput", "wait", "utilization"}
    for key in closed:
        assert closed[key] == pytest.approx(mva[key], rel=1e-9, abs=1e-12), key
    assert closed["utilization"] == pytest.approx(1 - closed["p0"], abs=1e-12)
    # Little's law on the cycle, and the asymptotic bounds (any hold distribution).
    assert M == pytest.approx(closed["throughput"] * (Z + closed["wait"] + S), rel=1e-12)
    assert closed["throughput"] <= th.deterministic_hold_throughput_bound(M, Z, S) * (1 + 1e-12)


@pytest.mark.parametrize("M,X,Wq", [(2, 1.8033, 0.0091), (5, 4.3605, 0.0467),
                                    (10, 7.8542, 0.1732), (20, 9.9813, 0.9037)])
def test_lock_table(M, X, Wq):
    for result in (th.closed_queue_lock(M, 1.0, 0.1), th.mva_lock(M, 1.0, 0.1)):
        assert result["throughput"] == pytest.approx(X, abs=1e-4)
        assert result["wait"] == pytest.approx(Wq, abs=1e-4)
        assert result["X"] == result["throughput"] and result["Wq"] == result["wait"]


def test_lock_large_M_is_finite_and_saturated():
    closed, mva = th.closed_queue_lock(10_000, 1.0, 0.1), th.mva_lock(10_000, 1.0, 0.1)
    assert all(math.isfinite(v) for v in closed.values())
    assert closed["throughput"] == pytest.approx(10.0, rel=1e-12)
    assert closed["wait"] == pytest.approx(10_000 / 10.0 - 1.1, rel=1e-9)
    assert closed["wait"] == pytest.approx(mva["wait"], rel=1e-9)


def _closed_lock_monte_carlo(M, think, S, n, seed):
    """Workers think, then queue FCFS for an exponential hold. Returns (X, mean wait)."""
    rng = np.random.default_rng(seed)
    arrivals = sorted(think(rng) for _ in range(M))  # next lock requests
    free_at, waits, last = 0.0, [], 0.0
    for _ in range(n):
        t = heapq.heappop(arrivals)
        start = max(t, free_at)
        free_at = start + rng.exponential(S)
        waits.append(start - t)
        heapq.heappush(arrivals, free_at + think(rng))
        last = free_at
    return n / last, float(np.mean(waits[n // 10:]))


def test_closed_lock_insensitive_to_think_distribution():
    # Deterministic think time, exponential hold: the closed form still holds.
    X, Wq = _closed_lock_monte_carlo(10, lambda rng: 1.0, 0.1, 40_000, seed=2)
    theory = th.closed_queue_lock(10, 1.0, 0.1)
    assert X == pytest.approx(theory["throughput"], rel=0.02)
    assert Wq == pytest.approx(theory["wait"], rel=0.06)


def test_open_mm1_is_textbook_and_blows_up():
    lam, S = 3.0, 0.2  # M/M/1: Wq = lam / (mu (mu - lam)), mu = 1/S
    assert th.open_mm1_lock_wait(lam, S) == pytest.approx(lam / (5.0 * (5.0 - lam)))
    assert th.open_mm1_lock_wait(5.0, S) == math.inf
    assert th.open_mm1_lock_wait(0.0, S) == 0.0


def test_deterministic_hold_bound_is_attained_by_staggered_workers():
    Z, S = 1.0, 0.1  # deterministic think and hold: the knee is at M = (Z + S)/S = 11
    for M in (3, 11, 30):
        requests = [i * S / M for i in range(M)]  # staggered first requests
        free_at, n = 0.0, 30 * M
        for _ in range(n):
            t = heapq.heappop(requests)
            free_at = max(t, free_at) + S
            heapq.heappush(requests, free_at + Z)
        assert n / free_at == pytest.approx(th.deterministic_hold_throughput_bound(M, Z, S),
                                            rel=0.03)


# --- argument validation -----------------------------------------------------------------------


@pytest.mark.parametrize("call,name", [
    (lambda: th.harmonic(-1), "n"),
    (lambda: th.critical_step(-1), "tau"),
    (lambda: th.critical_step(2, 0.0), "lam_max"),
    (lambda: th.critical_step(1.5), "tau"),
    (lambda: th.delayed_gd_is_stable(0.1, 1.0, -2), "tau"),
    (lambda: th.delayed_gd_is_stable(float("nan"), 1.0, 2), "eta"),
    (lambda: th.async_staleness_mean(0), "M"),
    (lambda: th.per_worker_staleness_mean([1.0, -2.0]), "mean_compute"),
    (lambda: th.update_shares([]), "mean_compute"),
    (lambda: th.geometric_staleness_pmf(True, 3), "M"),
    (lambda: th.geometric_staleness_pmf_rates([1.0, 2.0], 2, 5), "worker"),
    (lambda: th.little_identity_lhs_rhs([0, 1], [2], 2, 3), "N"),
    (lambda: th.little_identity_lhs_rhs([0, 1], [2, 2, 2], 2, 2), "M"),
    (lambda: th.momentum_mean_recursion(0.1, 1.0, 0, 5), "M"),
    (lambda: th.momentum_char_poly_roots(0.1, 1.0, 4, beta=float("inf")), "beta"),
    (lambda: th.dutta_time_per_iteration("k-sync", 8, 2), "variant"),
    (lambda: th.dutta_time_per_iteration("k_sync", 4, 5), "K"),
    (lambda: th.dutta_time_per_iteration("k_sync", 4, 2, mu=0.0), "mu"),
    (lambda: th.dutta_time_per_iteration("k_batch_sync", 4, 2, shift=1.0), "no simple closed"),
    (lambda: th.dutta_time_per_iteration("k_async", 4, 2, shift=1.0), "only an upper bound"),
    (lambda: th.dutta_error_floor(1.0, 2.0, 1.0, 1), "eta \\* c"),
    (lambda: th.dutta_error_floor(0.1, 1.0, -1.0, 1), "sigma2"),
    (lambda: th.softsync_updates_per_gradient(4, 5), "n"),
    (lambda: th.softsync_mean_staleness(0, 1), "lam_learners"),
    (lambda: th.dc_asgd_compensated([1.0, 2.0], [1.0], [1.0], 0.1), "shape"),
    (lambda: th.dc_asgd_compensated([1.0], [1.0], [1.0], -0.1), "lam"),
    (lambda: th.dc_asgd_adaptive_lambda(1.0, [-1.0]), "mean_square"),
    (lambda: th.ssp_max_clock_gap(-1), "s"),
    (lambda: th.ssp_periodic_throughput([1.0, 0.0], 1), "periods"),
    (lambda: th.ssp_periodic_throughput([1.0, 2.0], -1), "s"),
    (lambda: th.backup_workers_expected_time(0, 1), "N"),
    (lambda: th.backup_workers_expected_time(5, -1), "b"),
    (lambda: th.expected_order_statistic_exponential(6, 5), "k"),
    (lambda: th.easgd_exchange([1.0], [0.0], 1.5), "alpha"),
    (lambda: th.easgd_exchange([1.0, 2.0], [0.0], 0.5), "shape"),
    (lambda: th.local_sgd_drift_fixed_point([1.0], [1.0, 2.0], 0.1, 2), "cs"),
    (lambda: th.local_sgd_drift_fixed_point([1.0, 1.0], [1.0, 2.0], 0.1, 0), "H"),
    (lambda: th.local_sgd_drift_fixed_point([10.0, 10.0], [1.0, 2.0], 0.3, 1), "converge"),
    (lambda: th.sync_throughput(4, 0.0), "mean_max_time"),
    (lambda: th.expected_max_exponential([1.0, float("inf")]), "rates"),
    (lambda: th.closed_queue_lock(0, 1.0, 0.1), "M"),
    (lambda: th.closed_queue_lock(3, 0.0, 0.1), "think_time"),
    (lambda: th.mva_lock(3, 1.0, 0.0), "hold_time"),
    (lambda: th.open_mm1_lock_wait(-1.0, 0.1), "arrival_rate"),
    (lambda: th.deterministic_hold_throughput_bound(3, -1.0, 0.1), "think_time"),
])
def test_bad_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_public_namespace():
    assert len(set(th.__all__)) == len(th.__all__)
    assert all(hasattr(th, name) for name in th.__all__)
