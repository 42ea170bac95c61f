"""Workers stopped, served and restarted in bulk give the trace they give one at a time.

`CallbackLoop` stops a cohort of workers, serves it and restarts it with numpy steps
(timing/cohorts.py), and `ServerPolicy.read_many` notes its reads at once. Equivalence: with the
bulk paths switched off (``CallbackLoop.BULK`` above any cohort) and with `ProcessLoop`, every
scenario gives the identical trace, busy times and end; the scenarios mix partial cohorts (some
workers stopped, some arriving, some held), plain workers with slowdown windows and pipelines,
workers named twice, and user policies that override `on_read`.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ideal_scenario

from asgd_sim.algorithms import Apply, Serve, Stop
from asgd_sim.algorithms.base import ServerPolicy, _reads_in_bulk
from asgd_sim.algorithms.modern import RennalaPolicy, RingmasterPolicy
from asgd_sim.algorithms.rounds import KSyncPolicy
from asgd_sim.scenario.distributions import HalfNormal
from asgd_sim.timing.engine import TimingEngine
from asgd_sim.timing.loops import CallbackLoop, abandon
from asgd_sim.timing.workers import Sampler, SamplerBank, WorkerState, build_workers
from asgd_sim.trace import TraceBuilder

MODULE = __name__  # (the user policies below are named "test_restarts_bulk:Class" in scenarios)


class HalfStop(RennalaPolicy):
    """Rennala that stops only the even workers (the odd ones run on; their late pushes are
    cancelled), serves three of them before the update, names some twice."""

    def close_round(self, closer: int) -> list:
        batch, self.buffer = self.buffer, []
        stopped = [w for w in self.computing_on(self.round, besides=closer) if w % 2 == 0]
        self.round += 1
        self.waiters.extend(stopped + stopped[:1])
        members = [g for _, ids in batch for g in ids]
        return [Stop(stopped + stopped[:2]), Serve(stopped[:3]), Apply(members, [1.0 / len(members)] * len(members))]


class ReadLog(RingmasterPolicy):
    """Ringmaster with stops whose on_read (alone) is overridden: every read must reach it."""

    def __init__(self, scenario) -> None:
        super().__init__(scenario)
        self.stops, self.threshold = True, 2
        self.log: list[tuple[int, int]] = []

    def on_read(self, worker: int) -> None:
        super().on_read(worker)
        self.log.append((worker, self.version))


class Interleaved(KSyncPolicy):
    """K-sync serving its waiters (held pushers, stopped workers) in worker order: rows of stopped
    workers broken by held ones."""

    def on_applied(self, worker: int) -> list:
        waiters, self.waiters = self.waiters, []
        return [Serve(sorted(waiters))]


ALGORITHMS = {
    "rennala": {"kind": "rennala", "k": 5},
    "ringmaster-stops": {"kind": "ringmaster", "delay_threshold": 3, "stops": True},
    "k_sync": {"kind": "k_sync", "k": 4},
    "sync-backup": {"kind": "sync", "backup": 5},
    "k_batch_sync": {"kind": "k_batch_sync", "k": 7},
    "half-stop": {"kind": f"{MODULE}:HalfStop", "k": 5},
    "read-log": {"kind": f"{MODULE}:ReadLog"},
    "interleaved": {"kind": f"{MODULE}:Interleaved", "k": 6},
}
CLUSTERS = {
    "sqrt(i), ties": {"workers": [{"count": 40, "compute": {"dist": "constant", "value": "1 + sqrt(i)"}},
                                  {"name": "same", "count": 12, "compute": 2.0}]},
    "plain, slowdowns, pipelines, latency": {
        "workers": [{"name": "a", "count": 20, "compute": {"dist": "half_normal", "shift": "1 + sqrt(i)", "scale": "0.5"}},
                    {"name": "b", "count": 10, "compute": {"dist": "exponential", "mean": 2.0},
                     "slowdowns": [{"start": 4.0, "end": 40.0, "factor": 2.5}]},
                    {"name": "c", "count": 6, "compute": {"dist": "lognormal", "mean": 1.5, "cv": 0.3}, "stagger": 0.2,
                     "pipeline": {"stages": 2, "microbatches": 3}}],
        "network": {"latency": {"dist": "exponential", "mean": 0.03}}},
}


def run(sc, loop: str = "callbacks", window: list[int] | None = None):
    engine = TimingEngine(sc, loop=loop)
    for target in window or []:
        engine.step_until(target)
    return engine, engine.run()


def same(a, b) -> None:
    assert a.trace.equals(b.trace), "the traces differ"
    assert a.stopped == b.stopped and a.sim_time == b.sim_time and np.array_equal(a.busy, b.busy)


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bulk_restarts_give_the_trace_of_one_at_a_time(algorithm: str, cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = ideal_scenario(f"{algorithm}-{cluster}", CLUSTERS[cluster], algorithm=ALGORITHMS[algorithm], run={"until_updates": 120})
    bulk_engine, bulk = run(sc)
    assert bulk.trace.num_gradients > 500
    _, process = run(sc, "process")
    monkeypatch.setattr(CallbackLoop, "BULK", 10**9)  # every stop, serve and restart one at a time
    each_engine, each = run(sc)
    same(bulk, each)
    same(bulk, process)
    if algorithm == "read-log":  # the user's on_read saw every read, in the same order
        assert bulk_engine.policy.log == each_engine.policy.log and len(bulk_engine.policy.log) >= bulk.trace.num_gradients


def test_cohorts_restart_in_bulk_in_these_scenarios() -> None:
    # (The equivalence above is not vacuous: rounds do restart cohorts, stopped in one step.)
    sc = ideal_scenario("r", CLUSTERS["plain, slowdowns, pipelines, latency"], algorithm=ALGORITHMS["half-stop"],
                        run={"until_updates": 40})
    engine = TimingEngine(sc, loop="callbacks")
    calls = {"start": 0, "stop": 0}
    table = engine.loop.table
    for name in calls:
        original = getattr(table, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)
        setattr(table, name, counted)
    engine.run()
    assert calls["start"] >= 30 and calls["stop"] >= 30


def test_windowed_bulk_runs_match() -> None:
    # The numerics advance the engine in windows; the result (which syncs the workers) may come mid-run.
    sc = ideal_scenario("w", CLUSTERS["sqrt(i), ties"], algorithm=ALGORITHMS["ringmaster-stops"], run={"until_updates": 300})
    engine = TimingEngine(sc, loop="callbacks")
    for target in (20, 21, 90, 200):
        engine.step_until(target)
        engine.result()
    same(engine.run(), run(sc, "process")[1])


def test_read_many_is_bulk_only_where_on_read_has_a_matching_on_read_many() -> None:
    class Plain(ServerPolicy):
        pass

    class OwnRead(ServerPolicy):
        def read(self, worker: int) -> None:
            super().read(worker)

    class Both(RingmasterPolicy):
        def on_read(self, worker: int) -> None:
            super().on_read(worker)

        def on_read_many(self, workers: np.ndarray) -> None:
            super().on_read_many(workers)

    assert _reads_in_bulk(Plain) and _reads_in_bulk(RingmasterPolicy) and _reads_in_bulk(RennalaPolicy) and _reads_in_bulk(Both)
    assert not _reads_in_bulk(ReadLog) and not _reads_in_bulk(OwnRead)


def test_read_many_notes_what_read_notes() -> None:
    sc = ideal_scenario("p", {"workers": [{"count": 9, "compute": 1.0}]}, algorithm={"kind": "ringmaster", "stops": True,
                                                                                     "delay_threshold": 2})
    one, many = RingmasterPolicy(sc), RingmasterPolicy(sc)
    for policy in (one, many):
        policy.version, policy.round = 3, 2
    for w in (4, 1, 7):
        one.read(w)
    many.read_many(np.array([4, 1, 7]))
    assert np.array_equal(one.state, many.state) and np.array_equal(one.round_of, many.round_of)
    assert np.array_equal(one.serial, many.serial) and np.array_equal(one.started_at, many.started_at)
    one.version = many.version = 5
    assert one.on_update(5) == many.on_update(5) == [Stop([4, 1, 7]), Serve([4, 1, 7])]


def test_a_sampler_bank_draws_each_samplers_own_sequence() -> None:
    dists = [HalfNormal(shift=1.0 + i, scale=0.5 + i) for i in range(5)]
    alone = [Sampler(d, (7, 0, i)) for i, d in enumerate(dists)]
    banked = [Sampler(d, (7, 0, i)) for i, d in enumerate(dists)]
    banked[2]()  # (a sampler that drew before joining the bank keeps its place)
    bank = SamplerBank(banked)
    expected = [[s() for _ in range(4000)] for s in alone]
    got: list[list[float]] = [[] for _ in dists]
    got[2].append(expected[2][0])
    rng = np.random.default_rng(0)
    while min(len(g) for g in got) < 2500:  # bulk draws of random subsets, and single draws, across blocks
        rows = np.flatnonzero(rng.random(5) < 0.6)
        for row, value in zip(rows.tolist(), bank.draw(rows).tolist()):
            got[row].append(value)
        row = int(rng.integers(5))
        got[row].append(banked[row]())
    for row in range(5):
        assert got[row] == expected[row][:len(got[row])]


def test_cancel_computes_is_abandon_for_many_gradients() -> None:
    tr_one, tr_many = TraceBuilder(1), TraceBuilder(1)
    spans = [(0.0, 2.0), (1.0, 3.0), (2.5, 4.0), (0.5, 1.5), (1.2, 1.2)]  # ended, running, not started, ended, empty
    for tr in (tr_one, tr_many):
        for i, (start, end) in enumerate(spans):
            gid = tr.new_gradient(i, 0, 0, 0.0, 0.0, [0])
            tr.t_compute_start[gid], tr.t_compute_end[gid] = start, end
    now, busy_one = 2.0, []
    for gid in range(len(spans)):
        w = WorkerState(wid=gid, group=0, group_name="", start=0.0, compute=None, latency=None, slowdowns=None, pipeline=None,
                        failure_times=[], mtbf=None, down_time=None, failure_rng=None, priority=2, busy=10.0, unpushed=[gid])
        abandon(w, tr_one, now)
        busy_one.append(w.busy)
    lost = tr_many.cancel_computes(np.arange(len(spans)), now)
    assert (10.0 - lost).tolist() == busy_one
    assert tr_one.freeze().equals(tr_many.freeze())


def test_build_workers_banks_are_bound_once() -> None:
    sc = ideal_scenario("b", CLUSTERS["plain, slowdowns, pipelines, latency"])
    workers = build_workers(sc, sc.network.latency)
    table_engine = TimingEngine(sc, loop="callbacks")
    assert all(w.compute.bank is table_engine.loop.table.compute for w in table_engine.workers if w.compute.const is None)
    assert all(w.compute.bank is None for w in workers)  # (a process loop's samplers draw on their own)


@pytest.mark.parametrize("compute", [0.0, {"dist": "empirical", "values": [0.0, 1.0]}, {"dist": "exponential", "mean": 1.0}])
@pytest.mark.parametrize("kind", ["async", "rennala"])
def test_the_first_pulls_land_together_unless_someone_arrives_among_them(compute, kind: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # All workers start at once with one constant latency: one event serves their first pulls. A
    # worker with no compute and no latency would arrive between the others' pulls: then they pull
    # one by one (the draws taken to find out are rewound).
    sc = ideal_scenario("z", {"workers": [{"count": 12, "compute": compute}]}, algorithm={"kind": kind, "k": 3},
                        run={"until_updates": 60})
    _, together = run(sc)
    _, process = run(sc, "process")
    monkeypatch.setattr(CallbackLoop, "BULK", 10**9)
    _, each = run(sc)
    same(together, process)
    same(together, each)


def test_a_workers_list_drops_its_array_once_changed() -> None:
    from asgd_sim.algorithms.base import Workers, worker_array

    for change in (lambda ws: ws.append(9), lambda ws: ws.extend([9]), lambda ws: ws.insert(0, 9), lambda ws: ws.pop(),
                   lambda ws: ws.remove(5), lambda ws: ws.sort(reverse=True), lambda ws: ws.reverse(), lambda ws: ws.clear(),
                   lambda ws: ws.__setitem__(0, 9), lambda ws: ws.__delitem__(0), lambda ws: ws.__iadd__([9])):
        workers = Workers(np.array([5, 2, 7]))
        assert workers == [5, 2, 7] and worker_array(workers) is workers.array
        change(workers)
        assert workers.array is None and worker_array(workers).tolist() == list(workers)
    assert worker_array([3, 1]).tolist() == [3, 1]
    with pytest.raises(ValueError):
        Workers(np.array([1, 2])).array[0] = 5  # (read-only: the list and the array always agree)
