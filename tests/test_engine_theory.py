"""THEORY.md through the real timing engine (STYLE.md 7, level 2: analytic ground truth).

Every prediction comes from ``asgd_sim.theory`` (or is derived in a comment), never from a number
the engine produced. Scenarios run on the ideal cluster of the theory (zero latency, infinite
bandwidth, zero apply time) unless the check is about the server itself. Seeds are fixed, so the
runs are reproducible; the sample sizes are chosen so that the statistical error is a fraction
of the tolerance (noted next to each check).
"""

from __future__ import annotations


import numpy as np
import pytest

from asgd_sim.validation import theory
from asgd_sim.scenario.distributions import Constant, Exponential, LogNormal, Pareto, ShiftedExponential, Uniform
from asgd_sim.timing.engine import simulate_timing
from asgd_sim.results.summary import summarize_trace
from asgd_sim.trace import APPLIED, PENDING

from helpers import applied_order, group, make_scenario


def run(*groups, **kw):
    return simulate_timing(make_scenario(*groups, **kw))


def applied_staleness(trace) -> np.ndarray:
    return trace.staleness[trace.fate == APPLIED]


def late_rate(trace, skip: float = 0.25) -> float:
    """Updates per unit time over the run's last (1 - skip), past the start-up transient."""
    t = trace.u_applied
    first = int(len(t) * skip)
    return (len(t) - 1 - first) / (t[-1] - t[first])


# --- C2 staleness distribution in a parameter server -----------------------------------------

@pytest.mark.parametrize("compute", [Exponential(1.0), LogNormal(1.0, 1.5), Pareto(1.0, 1.5), Uniform(0.5, 1.5),
                                     Constant(1.0)], ids=lambda d: d.name)
@pytest.mark.parametrize("M", [1, 3, 8])
def test_c2_little_identity_exact(compute, M: int) -> None:
    # sum_k (tau_k + 1) + sum_{in flight j} (N - r_j) = M N, exactly, for any distribution.
    N = 3000
    tr = run(group(compute, M), updates=N, seed=M).trace
    in_flight = tr.fate == PENDING
    assert in_flight.sum() == M  # every worker has its next gradient in flight
    lhs, rhs = theory.little_identity_lhs_rhs(applied_staleness(tr), tr.read_version[in_flight, 0], M, N)
    assert lhs == rhs  # integer equality (sums of whole numbers, exact in float64)


@pytest.mark.parametrize("latency", [Constant(0.1), Exponential(0.05)], ids=["const", "exp"])
def test_c2_little_identity_with_latency(latency) -> None:
    # Pinned semantics: the push carries the next pull, which is served at the instant of the
    # worker's own update; latency delays the parameters' return trip, not the read. So the
    # identity stays exact with latency here (THEORY.md: only a pull latency that delays the read
    # would lower the left side).
    N, M = 3000, 5
    tr = run(group(Exponential(1.0), M), latency=latency, updates=N, seed=2).trace
    in_flight = tr.fate == PENDING
    lhs, rhs = theory.little_identity_lhs_rhs(applied_staleness(tr), tr.read_version[in_flight, 0], M, N)
    assert lhs == rhs


@pytest.mark.parametrize("M", [4, 8])
def test_c2_geometric_staleness_exponential(M: int) -> None:
    # Equal-rate exponential workers: tau ~ Geometric(1/M) on {0, 1, ...}.
    # N = 100k: the sample variance is within ~0.7 % (1 sd), P(0) within ~0.5 %.
    tr = run(group(Exponential(1.0), M), updates=100_000, seed=11).trace
    tau = applied_staleness(tr)
    assert tau.mean() == pytest.approx(theory.async_staleness_mean(M), rel=0.005)  # exact by Little, up to the in-flight term
    assert tau.var() == pytest.approx(theory.geometric_staleness_var(M), rel=0.03)
    assert (tau == 0).mean() == pytest.approx(1.0 / M, rel=0.03)
    kmax = 40 * M
    pmf = theory.geometric_staleness_pmf(M, kmax)
    empirical = np.bincount(np.minimum(tau, kmax + 1), minlength=kmax + 2) / tau.size
    tail = 1.0 - pmf.sum()
    total_variation = 0.5 * (np.abs(empirical[:-1] - pmf).sum() + abs(empirical[-1] - tail))
    assert total_variation < 0.015


def test_c2_unequal_rates_per_worker() -> None:
    # Exponential workers with means 0.5, 1, 1, 2, 4: E[tau_i] = m_i sum_{j != i} 1/m_j, update
    # shares (1/m_i)/sum 1/m_j, and each worker's staleness Geometric(p_i = r_i / sum r).
    # 300k updates: per-worker sd <= 1 % (the slowest worker has the fewest updates).
    means = [0.5, 1.0, 1.0, 2.0, 4.0]
    tr = run(*[group(Exponential(m)) for m in means], updates=300_000, seed=5).trace
    applied = tr.fate == APPLIED
    expected = theory.per_worker_staleness_mean(means)
    shares = theory.update_shares(means)
    rates = 1.0 / np.asarray(means)
    for w in range(len(means)):
        tau = tr.staleness[applied & (tr.worker == w)]
        assert tau.mean() == pytest.approx(expected[w], rel=0.05)
        assert tau.size / applied.sum() == pytest.approx(shares[w], rel=0.05)
        pmf = theory.geometric_staleness_pmf_rates(rates, w, 200)
        empirical = np.bincount(np.minimum(tau, 201), minlength=202)[:201] / tau.size
        assert 0.5 * np.abs(empirical - pmf).sum() < 0.03


@pytest.mark.parametrize("M", [2, 4, 8])
def test_c2_deterministic_staggered(M: int) -> None:
    # Constant compute T = 1, worker i starts at i T / M: the updates come every T/M in worker
    # order, so after the first round every gradient has exactly M - 1 updates between its read
    # and its own update. The first round: worker i read v0 and lands i-th -> tau = i.
    # (T / M is a binary fraction for these M, so every time is exact.)
    tr = run(group(1.0, M, stagger=1.0 / M), updates=50 * M).trace
    tau = tr.staleness[applied_order(tr)]
    assert list(tau[:M]) == list(range(M))
    assert (tau[M:] == M - 1).all()
    # The server therefore iterates delayed GD with the fixed delay tau = M - 1 (C1).
    assert np.diff(tr.u_applied[M:]) == pytest.approx(1.0 / M, abs=1e-12)


@pytest.mark.parametrize("M", [2, 5])
def test_c2_simultaneous_start_tied_completions(M: int) -> None:
    # Constant compute, all start together, so the completions tie. Pinned semantics: each worker
    # re-reads right after its own update (ties go by worker id), so round 1 gives tau 0..M-1 and
    # every later round tau = M - 1 exactly (not "uniform on {0..M-1}", which would be the other
    # semantics, everyone reading after the whole burst).
    tr = run(group(1.0, M), updates=20 * M).trace
    tau = tr.staleness[applied_order(tr)]
    assert list(tau[:M]) == list(range(M))
    assert (tau[M:] == M - 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("b, M", sorted(theory.SHIFTED_EXP_STALENESS_VAR_REFERENCE))
def test_c2_shifted_exponential_staleness_variance(b: float, M: int) -> None:
    # Monte Carlo reference data (THEORY.md C2, rtol 3 %); 150k updates give ~0.7 % sd.
    shift = theory.SHIFTED_EXP_STALENESS_VAR_SHIFT
    tr = run(group(ShiftedExponential(shift, b), M), updates=150_000, seed=3).trace
    reference = theory.SHIFTED_EXP_STALENESS_VAR_REFERENCE[(b, M)]
    assert applied_staleness(tr).var() == pytest.approx(reference, rel=theory.SHIFTED_EXP_STALENESS_VAR_RTOL)


# --- C4 Dutta et al. 2018: time per iteration ------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("variant", theory.DUTTA_VARIANTS)
def test_c4_dutta_time_per_iteration(variant: str) -> None:
    # P = 8 learners, K = 4, Exp(1), 20k iterations: within 2 % (sd of the mean ~0.3-0.5 %).
    P, K, N = 8, 4, 20_000
    result = run(group(Exponential(1.0), P), kind=variant, k=K, updates=N, seed=1)
    assert result.sim_time / N == pytest.approx(theory.dutta_time_per_iteration(variant, P, K), rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sync", "k_sync", "k_batch_async"])
def test_c4_dutta_shifted_exponential(variant: str) -> None:
    # X = Delta + Exp(mu), Delta = 1: sync Delta + H_P/mu, K-sync Delta + (H_P - H_{P-K})/mu,
    # K-batch-async K E[X]/P.
    P, K, N = 8, 4, 20_000
    result = run(group(ShiftedExponential(1.0, 1.0), P), kind=variant, k=K, updates=N, seed=2)
    assert result.sim_time / N == pytest.approx(theory.dutta_time_per_iteration(variant, P, K, shift=1.0), rel=0.02)


def test_c4_k_async_no_slower_than_k_sync_shifted() -> None:
    # Shifted exponential: K-async <= K-sync (THEORY.md C4; only the bound is known).
    P, K, N = 8, 4, 10_000
    k_async = run(group(ShiftedExponential(1.0, 1.0), P), kind="k_async", k=K, updates=N, seed=4).sim_time / N
    assert k_async <= theory.dutta_time_per_iteration("k_sync", P, K, shift=1.0) * 1.01


# --- C5 softsync staleness (Zhang et al. 2016) -----------------------------------------------

@pytest.mark.parametrize("M, K", [(16, 4), (16, 1), (8, 2), (8, 8)])
@pytest.mark.parametrize("compute", [Exponential(1.0), Uniform(0.9, 1.1)], ids=lambda d: d.name)
def test_c5_k_batch_async_staleness(M: int, K: int, compute) -> None:
    # K-batch-async is n-softsync with lambda = M learners and c = K gradients per update; each
    # learner pulls right after its push (after the update its push triggers), so
    # E[tau] = (lambda - 1)/c for any distribution. K = 1 is plain async (M - 1).
    tr = run(group(compute, M), kind="k_batch_async", k=K, updates=20_000, seed=6).trace
    n = M // K  # softsync's n with c = floor(lambda / n) = K
    assert applied_staleness(tr).mean() == pytest.approx(theory.softsync_mean_staleness(M, n), rel=0.01)


# --- C8 stale synchronous parallel (Ho et al. 2013) -------------------------------------------

@pytest.mark.parametrize("s", [0, 1, 3])
def test_c8_ssp_clock_gap_invariant(s: int) -> None:
    # Clocks counted at commit: max clock - min clock <= s + 1 after every commit. Heterogeneous
    # exponential workers (means 0.2 .. 2) push the fast ones against the bound all the time.
    means = [0.2, 0.5, 1.0, 2.0]
    tr = run(*[group(Exponential(m)) for m in means], kind="ssp", staleness_bound=s, updates=5000, seed=s).trace
    clocks = np.zeros(len(means), dtype=int)
    gaps = []
    for row in range(tr.num_update_rows):
        (gid,), _ = tr.members(row)
        clocks[tr.worker[gid]] += 1
        gaps.append(clocks.max() - clocks.min())
    assert max(gaps) <= theory.ssp_max_clock_gap(s)
    assert max(gaps) == theory.ssp_max_clock_gap(s)  # the bound is reached: the check can fail


@pytest.mark.parametrize("s", [2, None])
def test_c8_ssp_periodic_throughput(s) -> None:
    # Periods 1, 1, 2: any finite s runs at P / max T = 1.5; no bound (async) at sum 1/T = 2.5.
    kw = dict(kind="ssp", staleness_bound=s) if s is not None else dict(kind="async")
    tr = run(group(1.0, 2), group(2.0), updates=3000, **kw).trace
    assert late_rate(tr) == pytest.approx(theory.ssp_periodic_throughput([1.0, 1.0, 2.0], s), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("s", sorted(theory.SSP_EXP_THROUGHPUT_REFERENCE))
def test_c8_ssp_exponential_throughput(s: int) -> None:
    # P = 8, Exp(1): s = 0 is BSP (P/H_P exactly); the others are Monte Carlo reference values.
    # 40k updates: sd ~0.6 % of the throughput.
    N = 40_000
    result = run(group(Exponential(1.0), 8), kind="ssp", staleness_bound=s, updates=N, seed=0)
    assert N / result.sim_time == pytest.approx(theory.SSP_EXP_THROUGHPUT_REFERENCE[s], rel=0.03)


# --- C10 backup workers (Chen et al. 2016) ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("b", [0, 1, 2, 4, 8])
def test_c10_backup_workers(b: int) -> None:
    # N + b workers, the round closes on the first N pushes: E[T] = (H_{N+b} - H_b)/mu.
    # 5000 rounds: sd <= 0.4 % of the mean (b = 0, the widest), tolerance 1.5 %.
    N, rounds = 50, 5000
    result = run(group(Exponential(1.0), N + b), kind="sync", backup=b, updates=rounds, seed=b)
    assert result.sim_time / rounds == pytest.approx(theory.backup_workers_expected_time(N, b), rel=0.015)


# --- C12 throughput and lock contention -------------------------------------------------------

def test_c12_sync_and_async_throughput_heterogeneous() -> None:
    # Exponential rates 1, 2, 0.5, 4 (means 1, 0.5, 2, 0.25); no server bottleneck.
    # Sync: M / E[max_i T_i] gradients per unit time (E[max] by inclusion-exclusion).
    # Async: sum_i 1/E[T_i] updates per unit time.
    means = [1.0, 0.5, 2.0, 0.25]
    groups = [group(Exponential(m)) for m in means]
    M, N = len(means), 20_000
    sync = run(*groups, kind="sync", updates=N, seed=1)
    expected_max = theory.expected_max_exponential(1.0 / np.asarray(means))
    assert M * N / sync.sim_time == pytest.approx(theory.sync_throughput(M, expected_max), rel=0.02)
    asynchronous = run(*groups, kind="async", updates=4 * N, seed=1)
    assert 4 * N / asynchronous.sim_time == pytest.approx(theory.async_throughput(means), rel=0.02)


LOCK_CASES = [  # (M, compute, updates): enough updates for the wait's sd to be <= ~1 %.
    (2, Exponential(1.0), 400_000),
    (5, Exponential(1.0), 300_000),
    (10, Exponential(1.0), 300_000),
    (20, Exponential(1.0), 200_000),
    (5, LogNormal(1.0, 1.5), 300_000),  # insensitivity to the think-time distribution
    (20, LogNormal(1.0, 1.5), 200_000),
]


@pytest.mark.slow
@pytest.mark.parametrize("M, compute, N", LOCK_CASES, ids=[f"M{m}-{c.name}" for m, c, _ in LOCK_CASES])
def test_c12_lock_is_a_closed_queue(M: int, compute, N: int) -> None:
    # Think time Z = compute (mean 1, zero latency), hold S = apply_time ~ Exp(mean 0.1) under one
    # global mutex: the machine-repairman queue. Throughput X and lock wait Wq within 3 %.
    Z, S = 1.0, 0.1
    result = run(group(compute, M), lock="global", apply=Exponential(S), updates=N, seed=M)
    predicted = theory.closed_queue_lock(M, Z, S)
    summary = summarize_trace(result.trace, result.sim_time)
    assert summary["updates_per_s"] == pytest.approx(predicted["throughput"], rel=0.03)
    assert summary["lock_wait_mean"] == pytest.approx(predicted["wait"], rel=0.03)
    # Cross-check: exact MVA gives the same closed network.
    assert theory.mva_lock(M, Z, S)["throughput"] == pytest.approx(predicted["throughput"], rel=1e-9)


@pytest.mark.parametrize("M", [2, 10, 20])
def test_c12_deterministic_hold_bound(M: int) -> None:
    # Deterministic hold: X <= min(M / (Z + S), 1/S) for any think-time distribution.
    # Each completed cycle lasts at least its think time plus S, so the bound holds exactly for
    # the run's realized mean think time (the nominal Z = 1 only on average).
    Z, S, N = 1.0, 0.1, 20_000
    result = run(group(Exponential(Z), M), lock="global", apply=S, updates=N, seed=M)
    tr = result.trace
    applied = tr.fate == APPLIED
    realized_Z = float(np.mean((tr.t_compute_end - tr.t_compute_start)[applied]))
    assert realized_Z == pytest.approx(Z, rel=0.05)
    bound = theory.deterministic_hold_throughput_bound(M, realized_Z, S)
    assert N / result.sim_time <= bound * (1 + 1e-9)
    if M >= 20:  # saturated: the lock is busy nearly all the time, so the bound 1/S is nearly met
        assert N / result.sim_time == pytest.approx(1.0 / S, rel=0.01)
