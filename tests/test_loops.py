"""The two worker loops of the timing engine give the same trace, bit for bit.

`CallbackLoop` (no process per worker) runs every cluster without transfer time, failures or
readers-writer locks; `ProcessLoop` runs everything. On the clusters both can run, every algorithm
must produce the identical trace, busy times and stop reason with either (timing/loops.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import EXP1, ideal_scenario

from asgd_sim.timing.engine import TimingEngine
from asgd_sim.timing.loops import CallbackLoop, ProcessLoop

KINDS = {
    "async": {}, "sync": {}, "sync-backup": {"kind": "sync", "backup": 2}, "k_sync": {"k": 3}, "k_async": {"k": 3},
    "k_batch_sync": {"k": 4}, "k_batch_async": {"k": 3}, "ssp": {"staleness_bound": 1}, "local_sgd": {"local_steps": 3},
    "easgd": {"local_steps": 2}, "rennala": {"k": 9}, "ringmaster": {"delay_threshold": 3},
    "ringmaster-stops": {"kind": "ringmaster", "delay_threshold": 3, "stops": True}, "fedbuff": {"k": 3, "local_steps": 2},
    "fedasync": {"local_steps": 2}, "drop-stale": {"kind": "async", "drop_staleness_above": 4},
}
CLUSTERS = {
    "exponential": {"workers": [{"count": 6, "compute": EXP1}]},
    "mixed, latency, stagger, slowdown": {
        "workers": [{"name": "a", "count": 4, "compute": {"dist": "lognormal", "mean": 1.0, "cv": 0.5}, "stagger": 0.3},
                    {"name": "b", "count": 2, "compute": {"dist": "constant", "value": "2 + i"},
                     "slowdowns": [{"start": 5.0, "end": 9.0, "factor": 3.0}]}],
        "network": {"latency": {"dist": "exponential", "mean": 0.05}}},
    "shards, global lock, apply time": {
        "workers": [{"count": 6, "compute": EXP1}],
        "server": {"shards": 3, "lock": "global", "apply_time": {"dist": "exponential", "mean": 0.05}}},
    "ties: constant times": {"workers": [{"count": 5, "compute": 1.0}], "server": {"apply_time": 0.0}},
    # Enough workers that rounds and stops restart them in bulk (one trace append, sorted runs).
    "24 workers, sqrt(i) and noise": {"workers": [{"count": 24, "compute": {"dist": "half_normal", "shift": "1 + sqrt(i)",
                                                                           "scale": "0.5"}}],
                                      "network": {"latency": {"dist": "exponential", "mean": 0.02}}},
}


def engines(sc):
    return TimingEngine(sc, loop="process"), TimingEngine(sc, loop="callbacks")


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("kind", KINDS)
def test_both_loops_give_the_same_trace(kind: str, cluster: str) -> None:
    algorithm = {"kind": kind, **KINDS[kind]} if "kind" not in KINDS[kind] else KINDS[kind]
    if algorithm["kind"] == "sync" and "backup" in algorithm and cluster == "ties: constant times":
        algorithm = {**algorithm, "backup": 1}
    sc = ideal_scenario(f"{kind}-{cluster}", CLUSTERS[cluster], algorithm=algorithm, run={"until_updates": 150})
    process, callbacks = engines(sc)
    assert isinstance(process.loop, ProcessLoop) and isinstance(callbacks.loop, CallbackLoop)
    a, b = process.run(), callbacks.run()
    assert a.trace.num_gradients > 0 and a.stopped == b.stopped == "until_updates"
    assert a.trace.equals(b.trace), f"{kind} on {cluster}: the traces differ"
    assert a.sim_time == b.sim_time and np.array_equal(a.busy, b.busy)


def test_the_engine_picks_callbacks_only_where_they_model_everything() -> None:
    fast = ideal_scenario("f", {"workers": [{"count": 2, "compute": EXP1}]})
    assert isinstance(TimingEngine(fast).loop, CallbackLoop)
    for variant in ({"network": {"bandwidth": 1e9}}, {"server": {"lock": "rw"}},
                    {"workers": [{"count": 2, "compute": EXP1, "failures": {"at": [1.0], "restart_after": 1.0}}]}):
        assert isinstance(TimingEngine(ideal_scenario("p", {"workers": [{"count": 2, "compute": EXP1}]}, variant)).loop, ProcessLoop)


def test_windowed_runs_match_too() -> None:
    # The numerics advance the engine in windows (step_until): the loops must agree at every stop.
    sc = ideal_scenario("w", {"workers": [{"count": 7, "compute": EXP1}]}, algorithm={"kind": "ringmaster", "delay_threshold": 2,
                                                                                      "stops": True}, run={"until_updates": 400})
    process, callbacks = engines(sc)
    for target in (50, 51, 130, 400):
        process.step_until(target)
        callbacks.step_until(target)
        assert process.updates == callbacks.updates and process.env.now == callbacks.env.now
    assert process.result().trace.equals(callbacks.result().trace)
