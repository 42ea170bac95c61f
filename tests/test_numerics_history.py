"""The device history holds only versions still to be read, and reusing its slots is exact.

Each run is checked against an independent fold of its trace: every version of every shard kept in
a dict, each update computed from the exact versions its gradients read, one gradient at a time.
The scenarios are chosen to stress slot reuse: a 100x straggler (staleness in the hundreds, far
more than the versions in flight), shards landing at different times with per-shard drops,
K-batch-async (pushers go on before their gradient is applied), backup workers (cancellations),
and a history budget so small that it must grow.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from asgd_sim.numerics import planner as planner_module
from asgd_sim.numerics.planner import WavePlanner
from asgd_sim.timing.engine import TimingEngine
from asgd_sim.numerics.engine import NumericsEngine
from asgd_sim.numerics.stream import Metrics, drive
from asgd_sim.trace import PENDING

from helpers import EXP1, ideal_scenario, quadratic

LR = 0.05
STRAGGLER = [{"name": "fast", "count": 5, "compute": EXP1}, {"name": "straggler", "count": 1, "compute": {"dist": "exponential", "mean": 100.0}}]


def run(*parts: dict[str, Any], **sections: Any) -> tuple[NumericsEngine, Any]:
    sc = ideal_scenario("history-test", quadratic(list(np.linspace(0.2, 1.0, 8)), noise=0.05), *parts,
                        optimizer={"learning_rate": LR}, **sections)
    numerics = NumericsEngine(sc)
    engine = TimingEngine(sc, param_bytes=numerics.problem.param_bytes)
    drive(engine, numerics, Metrics())
    return numerics, engine.trace.freeze()


def fold(numerics: NumericsEngine, trace: Any) -> np.ndarray:
    """The parameters the trace implies, from scratch: plain SGD, every version kept."""
    problem, S, chunk = numerics.problem, numerics.S, numerics.chunk
    flat0, unravel = ravel_pytree(problem.init(jax.random.PRNGKey(numerics.scenario.run.seed)))
    P = flat0.size
    grad = jax.jit(jax.grad(lambda x, w, k: problem.loss(unravel(x), problem.make_batch(w, k))))
    start = np.zeros(S * chunk, np.float32)
    start[:P] = np.asarray(flat0)
    versions = {(s, 0): start[s * chunk:(s + 1) * chunk] for s in range(S)}
    current = [0] * S
    for r in range(numerics.row):
        s = int(trace.u_shard[r])
        lo, hi = trace.member_offsets[r], trace.member_offsets[r + 1]
        step = np.zeros(chunk, np.float64)
        for g, weight in zip(trace.member_gid[lo:hi], trace.member_weight[lo:hi]):
            read = np.concatenate([versions[(t, int(trace.read_version[g, t]))] for t in range(S)])
            full = np.zeros(S * chunk, np.float32)
            full[:P] = np.asarray(grad(read[:P], np.int32(trace.worker[g]), np.int32(trace.k[g])))
            step += weight * full[s * chunk:(s + 1) * chunk]
        assert int(trace.u_version[r]) == current[s] + 1
        versions[(s, current[s] + 1)] = (versions[(s, current[s])] - LR * step).astype(np.float32)
        current[s] += 1
    return np.concatenate([versions[(s, current[s])] for s in range(S)])[:P]


def engine_params(numerics: NumericsEngine) -> np.ndarray:
    return np.asarray(numerics.params).reshape(-1)[: numerics.P]


def assert_matches_fold(numerics: NumericsEngine, trace: Any) -> None:
    expected = fold(numerics, trace)
    np.testing.assert_allclose(engine_params(numerics), expected, rtol=1e-5, atol=1e-6)


def test_a_straggler_does_not_grow_the_history() -> None:
    numerics, trace = run(run={"until_updates": 1500, "eval_every": 500}, workers=STRAGGLER)
    applied = trace.staleness[trace.staleness >= 0]
    assert applied.max() > 200  # the straggler's gradients span hundreds of versions ...
    # ... but only ~7 versions are ever waiting to be read (one per worker plus the newest), so
    # the history keeps its initial size: a ring over the staleness span would need > 200 slots.
    assert numerics.planner.slots.capacity <= 64
    assert numerics.history.shape[0] == numerics.planner.slots.capacity + 1  # (+ the scratch row)
    held = int((numerics.planner.slots.holds >= 0).sum())
    assert held <= numerics.planner.slots.capacity
    assert_matches_fold(numerics, trace)


def test_collection_keeps_exactly_the_versions_still_to_be_read() -> None:
    numerics, trace = run(run={"until_updates": 600, "eval_every": 600}, workers=STRAGGLER)
    slots = numerics.planner.slots
    held_before = set(slots.holds[0][slots.holds[0] >= 0].tolist())
    numerics.planner._collect(_builder(trace), numerics.row, numerics.planner.versions)
    held = slots.holds[0][slots.holds[0] >= 0]
    kept = set(held.tolist())
    assert len(held) == len(kept)  # one slot per kept version
    # Independently, from the trace: the newest version (written by the last update row; one shard)
    # and the versions read by gradients still in flight (pending at the end of the run), nothing else.
    assert numerics.row == trace.num_update_rows == 600  # every row was applied
    newest = int(trace.u_version[trace.num_update_rows - 1])
    assert newest == 600 and int(numerics.planner.versions[0]) == newest
    pending = trace.fate == PENDING
    expected = {newest} | set(trace.read_version[pending, 0].tolist())
    assert kept == expected
    # What makes the check bite: the straggler's gradient in flight read a version hundreds of
    # updates old, which must survive, and the collection freed versions that were held before it.
    assert min(expected) < newest - 200
    assert kept < held_before


def _builder(trace: Any) -> Any:
    from asgd_sim.trace import TraceBuilder

    builder = TraceBuilder.from_trace(trace)
    # from_trace marks every gradient settled (a finished trace); the pending ones are not.
    for g in np.flatnonzero(trace.fate == PENDING):
        builder.resolved[g] = 0
    return builder


@pytest.mark.parametrize("sections", [
    # Shards land at different times (latency), some pushes dropped on one shard only.
    {"server": {"shards": 3, "lock": "shard", "apply_time": {"dist": "exponential", "mean": 0.05}},
     "network": {"latency": {"dist": "exponential", "mean": 0.2}}, "algorithm": {"drop_staleness_above": 4}},
    # Pushers keep computing before their gradient is applied.
    {"algorithm": {"kind": "k_batch_async", "k": 3}},
    # Rounds cancel the slowest workers' gradients.
    {"algorithm": {"kind": "sync", "backup": 2}},
], ids=["shards-drops", "k-batch-async", "backup"])
def test_slot_reuse_is_exact(sections: dict[str, Any]) -> None:
    numerics, trace = run(run={"until_updates": 400, "eval_every": 100}, workers=STRAGGLER, **sections)
    assert_matches_fold(numerics, trace)


# Every built-in algorithm whose updates combine gradients, on the straggler cluster: round-based
# ones go through the pooled path (one backward pass per round), the others through waves.
GRADIENT_KINDS = {
    "async": {}, "ssp": {"staleness_bound": 2}, "sync": {}, "k_sync": {"k": 3}, "k_async": {"k": 3},
    "k_batch_sync": {"k": 4}, "k_batch_async": {"k": 2}, "rennala": {"k": 4},
    "ringmaster": {"delay_threshold": 3, "stops": True},
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", GRADIENT_KINDS)
def test_every_gradient_algorithm_matches_the_fold(kind: str) -> None:
    numerics, trace = run(run={"until_updates": 60, "eval_every": 25}, workers=STRAGGLER,
                          algorithm={"kind": kind, **GRADIENT_KINDS[kind]})
    assert numerics.row == trace.num_update_rows > 0
    assert_matches_fold(numerics, trace)


SHARDED = {"server": {"shards": 4, "lock": "shard", "apply_time": {"dist": "exponential", "mean": 0.05}},
           "network": {"latency": {"dist": "exponential", "mean": 0.2}}}


def distinct_gradients(numerics: NumericsEngine, trace: Any) -> int:
    """Gradients used by the update rows the engine applied."""
    return len(np.unique(trace.member_gid[: trace.member_offsets[numerics.row]]))


def test_a_gradient_split_over_waves_is_computed_once() -> None:
    # Four shard rows per push, landing at different times: they fall in different waves, and
    # the later waves read the gradient from the cache instead of computing it again.
    numerics, trace = run(run={"until_updates": 400, "eval_every": 100}, workers=[{"count": 8, "compute": EXP1}], **SHARDED)
    distinct = distinct_gradients(numerics, trace)
    assert numerics.planner.cache.hits > distinct / 10  # the rows of many pushes were split across waves ...
    assert numerics.computed == distinct  # ... yet each gradient was computed once
    assert len(numerics.planner.cache.slot) <= 8  # freed after their last rows (left: pushes still in flight)
    assert_matches_fold(numerics, trace)


def test_a_full_gradient_cache_recomputes_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WavePlanner, "_cache_capacity", lambda self: 1)
    numerics, trace = run(run={"until_updates": 400, "eval_every": 100}, workers=[{"count": 8, "compute": EXP1}], **SHARDED)
    assert numerics.computed > distinct_gradients(numerics, trace)  # no room: some computed twice
    assert_matches_fold(numerics, trace)


def test_the_history_grows_when_the_versions_in_flight_need_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner_module, "HISTORY_BUDGET_BYTES", 1)  # start at the smallest size
    numerics, trace = run(run={"until_updates": 800, "eval_every": 400}, workers=[{"count": 40, "compute": EXP1}])
    smallest = 4 * numerics.planner.rows_per_wave
    assert numerics.planner.slots.capacity > smallest  # 40 workers read ~40 versions at once
    assert numerics.history.shape[0] == numerics.planner.slots.capacity + 1  # (+ the scratch row)
    assert_matches_fold(numerics, trace)
