"""The server lock's grant order (``server.lock_fifo``), its calibration from a trace, and the
frozen garbage collector of a real devices-backend run."""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import simpy

from asgd_sim.backends.devices import _collector_frozen
from asgd_sim.runner import run_scenario
from asgd_sim.scenario.config import ServerConfig
from asgd_sim.scenario.distributions import LogNormal
from asgd_sim.scenario.files import scenario_from_dict
from asgd_sim.studies.calibrate import calibrate_run, lock_fifo_grants
from asgd_sim.timing.engine import simulate_timing
from asgd_sim.timing.locks import Mutex

from helpers import group, make_scenario


def _grants(fifo: float, waiters: int, trials: int, seed: int = 0) -> np.ndarray:
    """Which waiter (0 = the one that asked first) the first release hands the lock to, per trial."""
    rng = np.random.default_rng(seed)
    chosen = np.empty(trials, np.int64)
    for t in range(trials):
        env = simpy.Environment()
        lock = Mutex(env, "lock", fifo, rng)
        assert lock.acquire(-1) is None  # free: taken with no event
        events = [lock.acquire(w) for w in range(waiters)]
        lock.release()
        granted = [w for w, e in enumerate(events) if e.triggered]
        assert len(granted) == 1 and lock.holder == granted[0]
        chosen[t] = granted[0]
    return chosen


def test_a_fifo_lock_grants_in_arrival_order() -> None:
    env = simpy.Environment()
    lock = Mutex(env, "lock")
    lock.acquire(9)
    events = {w: lock.acquire(w) for w in (3, 1, 2)}
    order = []
    for _ in range(3):
        lock.release()
        order.append(lock.holder)
        assert events[lock.holder].triggered  # type: ignore[index]
    assert order == [3, 1, 2]
    lock.release()
    assert lock.holder is None and not lock.waiting


def test_an_unfair_lock_hands_over_to_the_oldest_with_its_probability_else_uniformly() -> None:
    trials = 4000
    never = _grants(0.0, 4, trials)
    assert not (never == 0).any()
    counts = np.bincount(never, minlength=4)[1:]
    # uniform over the other three: each share within 4 binomial standard deviations of 1/3
    assert np.all(np.abs(counts / trials - 1 / 3) < 4 * np.sqrt(1 / 3 * 2 / 3 / trials))
    mostly = _grants(0.7, 3, trials, seed=1)
    share = float(np.mean(mostly == 0))
    assert abs(share - 0.7) < 4 * np.sqrt(0.7 * 0.3 / trials)
    assert (_grants(0.0, 1, 50) == 0).all()  # a lone waiter always gets it


def test_an_unfair_lock_needs_a_random_stream() -> None:
    with pytest.raises(ValueError, match="random stream"):
        Mutex(simpy.Environment(), "lock", 0.5, None)


def test_fifo_grants_are_read_back_from_a_hand_built_trace() -> None:
    # One lock; holds in grant order (request, start, end):
    #   0: (0.0, 0.0, 1.0)
    #   1: (0.2, 1.0, 2.0)  at 1.0 requests 0.2, 0.6, 0.5 wait: a choice, the oldest wins
    #   2: (0.6, 2.0, 3.0)  at 2.0 requests 0.6, 0.5 wait: a choice, not the oldest
    #   3: (0.5, 3.0, 4.0)  at 3.0 only 0.5 waits: no choice
    #   4: (5.1, 5.2, 6.0)  at 4.0 nobody waits; it arrived after 5.0 while 4.5 and 4.8 waited:
    #                       at 4.0 nothing waited, so no choice is counted for this hold
    #   5: (4.5, 6.0, 7.0)  at 6.0 requests 4.5 and 4.8 wait: a choice, the oldest wins
    #   6: (4.8, 7.0, 8.0)
    req = np.array([0.0, 0.2, 0.6, 0.5, 5.1, 4.5, 4.8])
    start = np.array([0.0, 1.0, 2.0, 3.0, 5.2, 6.0, 7.0])
    end = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0])
    trace = SimpleNamespace(u_request=req, u_lock=start, u_applied=end, u_shard=np.zeros(7, np.int64), num_update_rows=7)
    assert lock_fifo_grants(trace, ServerConfig(lock="global")) == (2, 3)  # type: ignore[arg-type]
    shuffled = np.random.default_rng(0).permutation(7)  # the trace's row order does not matter
    trace2 = SimpleNamespace(u_request=req[shuffled], u_lock=start[shuffled], u_applied=end[shuffled],
                             u_shard=np.zeros(7, np.int64), num_update_rows=7)
    assert lock_fifo_grants(trace2, ServerConfig(lock="global")) == (2, 3)  # type: ignore[arg-type]
    assert lock_fifo_grants(trace, ServerConfig(lock="none")) == (0, 0)  # type: ignore[arg-type]


def _lock_bound(fifo: float, seed: int = 0):  # type: ignore[no-untyped-def]
    # 8 workers of ~2 ms against one lock held 0.5 ms per update: ~4 updates wait at every release.
    sc = make_scenario(group(LogNormal(0.002, 0.3), 8), apply=0.0005, lock="global", updates=3000, seed=seed)
    return dataclasses.replace(sc, server=dataclasses.replace(sc.server, lock_fifo=fifo))


def test_the_simulated_grant_order_is_measured_back_from_its_trace() -> None:
    fifo, chosen = lock_fifo_grants(simulate_timing(_lock_bound(1.0)).trace, _lock_bound(1.0).server)
    assert chosen > 2000 and fifo == chosen
    fifo, chosen = lock_fifo_grants(simulate_timing(_lock_bound(0.6)).trace, _lock_bound(0.6).server)
    assert chosen > 2000 and abs(fifo / chosen - 0.6) < 4 * np.sqrt(0.6 * 0.4 / chosen)


def test_an_unfair_lock_spreads_staleness_but_keeps_a_saturated_servers_rate() -> None:
    fair, unfair = simulate_timing(_lock_bound(1.0)).trace, simulate_timing(_lock_bound(0.3)).trace
    # Lock-bound either way: one update per 0.5 ms hold.
    for trace in (fair, unfair):
        assert trace.num_update_rows / float(np.max(trace.u_applied)) == pytest.approx(2000, rel=0.02)
    # The same mean staleness (every update still waits its turn on average), a wider spread.
    assert unfair.staleness.mean() == pytest.approx(fair.staleness.mean(), rel=0.05)
    assert unfair.staleness.std() > 1.5 * fair.staleness.std()
    # Deterministic: the same seed, the same grants.
    again = simulate_timing(_lock_bound(0.3)).trace
    assert np.array_equal(again.u_lock, unfair.u_lock) and np.array_equal(again.staleness, unfair.staleness)


def test_calibration_recovers_the_lock_grant_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sc = _lock_bound(0.6, seed=3)
    run_scenario(sc, tmp_path / "run", timing_only=True)
    cal, report = calibrate_run(tmp_path / "run")
    assert cal.server.lock_fifo == pytest.approx(0.6, abs=0.05)
    assert "lock FIFO" in report and "went to the longest waiter" in report
    # fidelity says what it calibrated, and its simulation of the unfair lock matches the run's staleness
    import re

    from asgd_sim.cli import main

    assert main(["fidelity", str(tmp_path / "run"), "--timing-only", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    fitted = re.search(r"lock grants: \d+ of \d+ releases .* \(server.lock_fifo = ([0-9.]+)\)", out)
    assert fitted is not None and float(fitted.group(1)) == pytest.approx(0.6, abs=0.05)
    fidelity = json.loads((tmp_path / "run" / "fidelity.json").read_text())
    assert fidelity["staleness_ks"] <= 0.05 and fidelity["throughput_error"] <= 0.02
    # Too few contended releases (a lightly loaded lock) keep the idealised FIFO lock.
    light = scenario_from_dict({"workers": [{"count": 2, "compute": 0.01}], "run": {"until_updates": 200},
                                "server": {"lock": "global", "apply_time": 0.0005, "lock_fifo": 0.2}})
    run_scenario(light, tmp_path / "light", timing_only=True)
    assert calibrate_run(tmp_path / "light")[0].server.lock_fifo == 1.0


def test_a_real_run_freezes_the_collector_and_releases_it() -> None:
    before = gc.get_freeze_count()
    with _collector_frozen():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0
