"""How a run's cost grows with the work: updates, workers, worker groups and shards (issue 14).

No wall-clock assertions (the machine is shared): what is checked is what the time and memory are
made of. The device history holds the versions still to be read, so it follows the workers (the
staleness in flight), not the updates; the trace costs a fixed number of bytes per gradient and
per update row; and the Python work of building and running a cluster grows linearly with its
worker groups, counted in function calls (which a loaded machine does not change).
"""

from __future__ import annotations

import cProfile
import pstats
from typing import Any

import numpy as np
import pytest

from asgd_sim.numerics.engine import NumericsEngine
from asgd_sim.numerics.stream import Metrics, drive
from asgd_sim.scenario import scenario_from_dict
from asgd_sim.timing.engine import TimingEngine

from helpers import EXP1, IDEAL_CLUSTER, ideal_scenario, merge, quadratic


def trace_bytes(tr: Any) -> tuple[int, int]:
    """Bytes of the per-gradient columns and of the per-update-row columns of a finished trace."""
    per_gradient = sum(a.nbytes for a in (tr.worker, tr.k, tr.local_step, tr.read_version, tr.staleness, tr.fate,
                                          *tr.times.values()))
    per_row = sum(a.nbytes for a in (tr.u_shard, tr.u_version, tr.u_request, tr.u_lock, tr.u_applied, tr.u_push,
                                     tr.member_offsets, tr.member_gid, tr.member_weight))
    return per_gradient, per_row


def simulate_engines(workers: int, updates: int, shards: int = 1) -> tuple[NumericsEngine, Any]:
    sc = ideal_scenario("scaling", quadratic(list(np.linspace(0.2, 1.0, 8)), noise=0.05),
                        run={"until_updates": updates, "eval_every": updates}, workers=[{"count": workers, "compute": EXP1}],
                        server={"shards": shards, "lock": "none"}, optimizer={"learning_rate": 0.001})
    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=numerics.problem.param_bytes)
    drive(engine, numerics, Metrics())
    return numerics, engine.trace.freeze()


def test_memory_follows_the_workers_not_the_updates() -> None:
    short_numerics, short = simulate_engines(200, 1000)
    long_numerics, long = simulate_engines(200, 4000)
    assert long_numerics.row == long.num_update_rows == 4000
    # The history: the same slots after 4x the updates (the versions in flight, ~one per worker).
    assert long_numerics.history.shape == short_numerics.history.shape
    assert long_numerics.history.shape[0] <= 4 * (200 + 1) + 1
    # The trace: bytes per gradient and per update row do not grow with the run.
    for numerics, tr in ((short_numerics, short), (long_numerics, long)):
        per_gradient, per_row = trace_bytes(tr)
        assert per_gradient / tr.num_gradients <= 100  # (8 float64 times, 4 int64s, 2 int32s, a byte)
        assert per_row / tr.num_update_rows <= 80


@pytest.mark.slow
def test_ten_thousand_workers_with_real_gradients() -> None:
    numerics, tr = simulate_engines(10_000, 30_000)
    assert numerics.row == tr.num_update_rows == 30_000
    assert numerics.computed == 30_000  # every applied gradient computed once, at the version it read
    # Each worker reads one version at a time: the history holds at most ~2 slots per worker
    # (8 floats each here), whatever the run's length.
    assert numerics.history.shape[0] <= 4 * (10_000 + 1) + 1
    # Staleness: the 10,000 first reads are all version 0, so the mean delay is in the thousands.
    assert numerics.staleness_mean() > 1000


def test_shards_split_the_history_not_multiply_it() -> None:
    one, _ = simulate_engines(50, 300, shards=1)
    four, tr = simulate_engines(50, 300, shards=4)
    # S shard rows of ceil(P / S) floats: one parameter vector per slot, however many shards.
    assert one.history.shape[1:] == (1, 8) and four.history.shape[1:] == (4, 2)
    assert four.history.shape[0] <= 2 * one.history.shape[0]
    assert tr.read_version.shape == (tr.num_gradients, 4)  # the trace keeps one read version per shard


def calls_to_build_and_run(groups: int) -> int:
    """Python function calls to load, build and run (timing only) ``groups`` single-worker groups
    for 5 updates per worker."""
    data = merge(IDEAL_CLUSTER, {
        "workers": [{"name": f"g{i}", "count": 1, "compute": {"dist": "exponential", "mean": 1.0 + i % 7}} for i in range(groups)],
        "run": {"until_updates": 5 * groups}, "model": {"param_bytes": 1.0}})
    profile = cProfile.Profile()
    profile.enable()
    TimingEngine(scenario_from_dict(data, name="groups")).run()
    profile.disable()
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined]


def test_worker_groups_cost_linearly() -> None:
    small, large = calls_to_build_and_run(100), calls_to_build_and_run(400)
    # 4x the groups (and their updates): 4x the work if linear, 16x if quadratic.
    assert 3.0 <= large / small <= 5.0, (small, large)
