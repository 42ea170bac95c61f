"""Asynchronous SGD in closed form gives the SimPy engine's trace, bit for bit.

`timing.closed_form.ClosedFormAsync` lays out every worker's computations as running sums of its
draws and merges them, instead of simulating events. Equivalence with `TimingEngine` (the
reference: the SimPy model every other test checks) on whole runs and step by step: every trace
column, the end, the simulated time and each worker's busy time; and `simulate` gives the same
numbers with either. Scenarios mix per-worker distributions, ties (constant and empirical
compute), latencies, fewer workers than the callback loop's bulk start, both stop conditions, and
windows forced small so that laying out happens many times.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_scenario, group
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgd_sim import runner
from asgd_sim.scenario.config import Failures, Slowdown
from asgd_sim.scenario.distributions import Empirical, Exponential, Gamma, HalfNormal, LogNormal, PerWorker, Uniform
from asgd_sim.scenario.files import load_scenario
from asgd_sim.timing import closed_form
from asgd_sim.timing.closed_form import ClosedFormAsync, closed_form_applies, make_timing_engine
from asgd_sim.timing.engine import TimingEngine


def papers_workers(count: int) -> PerWorker:
    """The Ringmaster paper's worker j: 1 + sqrt(j) + |N(0, j + 1)| seconds per gradient."""
    members = tuple(HalfNormal(shift=1.0 + np.sqrt(j), scale=np.sqrt(j + 1.0)) for j in range(count))
    return PerWorker(kind="half_normal", params=(("shift", "1 + sqrt(i)"), ("scale", "sqrt(i + 1)")), members=members)


def assert_same_run(sc, steps: list[int] | None = None) -> int:
    """Run ``sc`` with both engines (``steps``: the update counts `step_until` is called with, in
    order, then to the end) and compare them after every step; returns the updates made."""
    assert closed_form_applies(sc)
    simpy_engine, closed = TimingEngine(sc), ClosedFormAsync(sc)
    assert closed.exact
    for target in [*(steps or []), np.inf]:
        assert simpy_engine.step_until(target) == closed.step_until(target)
        assert closed.updates == simpy_engine.updates and closed.env.now == simpy_engine.env.now
        assert closed.trace.num_gradients == simpy_engine.trace.num_gradients
        assert closed.freeze().equals(simpy_engine.freeze())
    a, b = simpy_engine.result(), closed.result()
    assert a.trace.equals(b.trace)
    assert (a.stopped, a.sim_time, a.updates) == (b.stopped, b.sim_time, b.updates)
    assert a.busy == b.busy  # (exactly: the same additions in the same order)
    return b.updates


CASES = {
    "papers_workers": dict(groups=[group(papers_workers(40), count=40)], until_time=60.0, updates=None),
    "exponential_latency": dict(groups=[group(Exponential(mean_=0.5), count=12)], latency=0.01, updates=500),
    "constant_ties": dict(groups=[group(1.0, count=9)], until_time=10.5, updates=None),
    "empirical_ties": dict(groups=[group(Empirical(values=(0.5, 1.0, 1.5)), count=10)], updates=400, latency=0.25),
    "few_workers": dict(groups=[group(LogNormal(mean_=1.0, cv=0.5), count=3)], until_time=40.0, updates=None),
    "both_stops": dict(groups=[group(Gamma(mean_=1.0, cv=2.0), count=16)], until_time=30.0, updates=250),
    "two_groups": dict(groups=[group(Uniform(low=0.2, high=0.4), count=5, name="fast"),
                               group(Exponential(mean_=3.0), count=20, name="slow")], updates=600),
}


@pytest.mark.parametrize("window", [closed_form.WINDOW_EVENTS, 7])
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_trace_as_the_simpy_engine(case, window, monkeypatch):
    monkeypatch.setattr(closed_form, "WINDOW_EVENTS", window)
    spec = dict(CASES[case])
    sc = make_scenario(*spec.pop("groups"), apply=0.0, seed=3, **spec)
    assert assert_same_run(sc) > 0


def test_same_trace_step_by_step(monkeypatch):
    """As `numerics.stream.drive` calls it: a few updates at a time, then to the end."""
    monkeypatch.setattr(closed_form, "WINDOW_EVENTS", 50)
    sc = make_scenario(group(papers_workers(30), count=30), apply=0.0, updates=None, until_time=80.0)
    assert assert_same_run(sc, steps=[0, 1, 2, 5, 37, 38, 120, 300]) > 300


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workers=st.integers(1, 24), mean=st.floats(0.05, 5.0), cv=st.floats(0.0, 3.0), latency=st.sampled_from([0.0, 0.003, 0.5]),
       seed=st.integers(0, 2**16), updates=st.integers(1, 400), horizon=st.one_of(st.none(), st.floats(1.0, 50.0)),
       window=st.integers(1, 300))
def test_same_trace_fuzzed(workers, mean, cv, latency, seed, updates, horizon, window):
    original = closed_form.WINDOW_EVENTS
    closed_form.WINDOW_EVENTS = window
    try:
        sc = make_scenario(group(Gamma(mean_=mean, cv=cv), count=workers), apply=0.0, latency=latency, seed=seed,
                           updates=updates, until_time=horizon)
        assert_same_run(sc, steps=[updates // 3])
    finally:
        closed_form.WINDOW_EVENTS = original


def test_simulate_gives_the_same_numbers(monkeypatch):
    """The numerics fold the closed form's trace into the same parameters and metrics."""
    sc = load_scenario("scenarios/papers/ringmaster_quadratic.toml",
                       ["algorithm.kind=async", "algorithm.stops=false", "workers[0].count=50", "run.until_time=120",
                        "run.eval_every=40", "optimizer.learning_rate=0.05"])
    assert isinstance(make_timing_engine(sc), ClosedFormAsync)
    closed = runner.simulate(sc)
    monkeypatch.setattr(runner, "make_timing_engine", lambda scenario, param_bytes=None: TimingEngine(scenario, param_bytes))
    reference = runner.simulate(sc)
    assert closed.trace.equals(reference.trace)
    assert closed.summary["updates"] == reference.summary["updates"] > 100
    for name, values in reference.metrics.items():
        np.testing.assert_array_equal(closed.metrics[name], values, err_msg=name)
    for key in ("final_grad_norm_sq", "final_loss", "sim_time", "busy_fraction", "staleness_mean"):
        if key in reference.summary:
            assert closed.summary[key] == reference.summary[key], key


NOT_CLOSED = {
    "apply_time": dict(apply=0.001),
    "sync": dict(kind="sync"),
    "shards": dict(shards=2),
    "bandwidth": dict(bandwidth=1e9),
    "random_latency": dict(latency=Exponential(mean_=0.01)),
    "drop_stale": dict(drop_staleness_above=3),
}


@pytest.mark.parametrize("case", sorted(NOT_CLOSED))
def test_other_scenarios_take_the_simpy_engine(case):
    knobs = {"apply": 0.0, **NOT_CLOSED[case]}
    sc = make_scenario(group(Exponential(mean_=1.0), count=8), **knobs)
    assert not closed_form_applies(sc)
    assert isinstance(make_timing_engine(sc), TimingEngine)


@pytest.mark.parametrize("feature", ["stagger", "slowdowns", "failures"])
def test_workers_with_their_own_timeline_take_the_simpy_engine(feature):
    extra = {"stagger": {"stagger": 0.1}, "slowdowns": {"slowdowns": (Slowdown(start=1.0, end=2.0, factor=3.0),)},
             "failures": {"failures": Failures(at=(2.0,))}}[feature]
    sc = make_scenario(group(Exponential(mean_=1.0), count=8, **extra), apply=0.0)
    assert not closed_form_applies(sc)


def test_an_arrival_at_the_first_read_takes_the_simpy_engine():
    """Zero compute and latency: the first pushes arrive as the first reads are served, and the
    callback loop then pulls worker by worker; the closed form declines."""
    sc = make_scenario(group(0.0, count=8), apply=0.0, updates=50)
    assert closed_form_applies(sc)
    engine = make_timing_engine(sc)
    assert isinstance(engine, TimingEngine)
    assert engine.run().updates == 50
