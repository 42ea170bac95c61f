"""Workers that share a device (``[[devices]]``, ``workers[].device``): processor sharing.

Exact event logs worked out by hand (a device of capacity c runs n computations at min(1, c/n)
of full speed each), the identity with today's engine where a device never fills up, failures
and stops in the middle of a shared computation, and the scenario keys' errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import EXP1, group, ideal_scenario, make_scenario

from asgd_sim.errors import ScenarioError
from asgd_sim.scenario.config import Device, Failures
from asgd_sim.scenario.distributions import Exponential, LogNormal
from asgd_sim.scenario.files import dumps_scenario, load_scenario, scenario_from_dict
from asgd_sim.timing.engine import TimingEngine, simulate_timing
from asgd_sim.timing.loops import CallbackLoop, ProcessLoop
from asgd_sim.trace import APPLIED, CANCELLED

EXACT = dict(abs=1e-12)


def on_device(sc, capacity: float, name: str = "d"):
    """``sc`` with every worker group on one device of ``capacity``."""
    return dataclasses.replace(sc, devices=(Device(name, capacity),),
                               workers=tuple(dataclasses.replace(g, device=name) for g in sc.workers))


def test_two_workers_on_one_core_take_twice_as_long() -> None:
    # Capacity 1, two workers of work 1.0, no latency, apply 0: both compute at 1/2 from 0 to 2,
    # push at 2, read v2 and start again: updates at 2, 2, 4, 4, ...
    tr = simulate_timing(on_device(make_scenario(group(1.0, 2), lock="none", updates=6), 1.0)).trace
    assert list(tr.t_compute_start[:6]) == [0.0, 0.0, 2.0, 2.0, 4.0, 4.0]
    assert list(tr.t_compute_end[:6]) == [2.0, 2.0, 4.0, 4.0, 6.0, 6.0]
    assert list(tr.u_applied) == [2.0, 2.0, 4.0, 4.0, 6.0, 6.0]


def test_a_computation_speeds_up_when_another_ends() -> None:
    # Capacity 1, work 1.0, worker 1 starts 0.5 later. w0 runs alone to 0.5 (0.5 done), then both
    # at 1/2: w0 ends at 1.5, when w1 has done 0.5; w0 starts again at 1.5, so both run at 1/2
    # and w1 ends at 2.5, w0 (0.5 done) at 3.5, and so on: each computation takes 2.
    tr = simulate_timing(on_device(make_scenario(group(1.0, 2, stagger=0.5), lock="none", updates=6), 1.0)).trace
    assert tr.worker[:6].tolist() == [0, 1, 0, 1, 0, 1]
    assert tr.t_compute_start[:6] == pytest.approx([0.0, 0.5, 1.5, 2.5, 3.5, 4.5], **EXACT)
    assert tr.t_compute_end[:6] == pytest.approx([1.5, 2.5, 3.5, 4.5, 5.5, 6.5], **EXACT)


def test_a_computation_never_runs_faster_than_full_speed_and_a_fraction_of_a_core_is_slower() -> None:
    # One worker on a device of capacity 4: full speed (work 1 -> 1 s); on capacity 0.5: 2 s.
    fast = simulate_timing(on_device(make_scenario(group(1.0), updates=3), 4.0)).trace
    slow = simulate_timing(on_device(make_scenario(group(1.0), updates=3), 0.5)).trace
    assert list((fast.t_compute_end - fast.t_compute_start)[:3]) == [1.0, 1.0, 1.0]
    assert list((slow.t_compute_end - slow.t_compute_start)[:3]) == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("kind, extra", [("async", {}), ("sync", {}), ("k_batch_sync", {"k": 3}), ("local_sgd", {"local_steps": 2}),
                                         ("ringmaster", {"delay_threshold": 2, "stops": True})])
def test_a_device_that_never_fills_up_changes_nothing(kind: str, extra: dict) -> None:
    # 4 workers on a device of capacity 4 (or more) never share it: the trace is today's, bit for bit.
    sc = make_scenario(group(Exponential(1.0), 3), group(LogNormal(0.5, 0.5), 1), kind=kind, latency=Exponential(0.05),
                       apply=0.01, updates=200, **extra)
    plain, shared = simulate_timing(sc), simulate_timing(on_device(sc, 4.0))
    assert plain.trace.equals(shared.trace) and plain.busy == shared.busy and plain.sim_time == shared.sim_time


def test_workers_on_a_device_need_the_process_loop() -> None:
    sc = make_scenario(group(1.0, 2))
    assert isinstance(TimingEngine(sc).loop, CallbackLoop)
    assert isinstance(TimingEngine(on_device(sc, 1.0)).loop, ProcessLoop)


def test_a_failure_ends_a_shared_computation_and_the_other_speeds_up() -> None:
    # Capacity 1, work 1.0; worker 1 crashes at 0.5 for good. Until 0.5 both run at 1/2 (w0 has
    # 0.25 done), then w0 alone: 0.75 left -> ends at 1.25. w1's computation is cut at 0.5.
    sc = make_scenario(group(1.0), group(1.0, failures=Failures(at=(0.5,))), lock="none", updates=3)
    tr = simulate_timing(on_device(sc, 1.0)).trace
    w0, w1 = np.flatnonzero(tr.worker == 0), np.flatnonzero(tr.worker == 1)
    assert tr.t_compute_end[w0[:3]] == pytest.approx([1.25, 2.25, 3.25], **EXACT)
    assert tr.fate[w1[0]] == CANCELLED and tr.t_compute_end[w1[0]] == 0.5


def test_processor_sharing_throughput_and_stretch() -> None:
    # docs/THEORY.md C17: M always-busy workers on capacity c < M complete c / E[work] per second,
    # each computation taking M E[work] / c on average, whatever the work's distribution.
    for M, capacity, work in ((6, 2.0, EXP1), (5, 1.5, {"dist": "lognormal", "mean": 1.0, "cv": 1.2})):
        sc = ideal_scenario("ps", {"workers": [{"count": M, "compute": work, "device": "d"}],
                                   "devices": [{"name": "d", "capacity": capacity}], "server": {"lock": "none"}},
                            run={"until_updates": 20_000})
        result = simulate_timing(sc)
        tr = result.trace
        done = tr.fate == APPLIED
        assert tr.num_update_rows / result.sim_time == pytest.approx(capacity, rel=0.03)
        assert np.mean(tr.t_compute_end[done] - tr.t_compute_start[done]) == pytest.approx(M / capacity, rel=0.03)


@pytest.mark.parametrize("kind, extra", [("ringmaster", {"delay_threshold": 2, "stops": True}), ("sync", {"backup": 1}),
                                         ("rennala", {"k": 4}), ("async", {})])
def test_invariants_with_shared_devices_network_failures_and_stops(kind: str, extra: dict) -> None:
    sc = make_scenario(group(Exponential(1.0), 4), group(Exponential(2.0), 2, failures=Failures(mtbf=5.0, mttr=1.0)),
                       kind=kind, latency=Exponential(0.02), bandwidth=5e6, server_bandwidth=2e6, param_bytes=1e5,
                       apply=0.01, updates=300, **extra)
    result = simulate_timing(on_device(sc, 2.5))
    tr = result.trace
    assert result.stopped == "until_updates"
    started = np.isfinite(tr.t_compute_start)
    assert np.all(tr.t_compute_end[started & np.isfinite(tr.t_compute_end)] >= tr.t_compute_start[started & np.isfinite(tr.t_compute_end)])
    applied = tr.fate == APPLIED
    assert np.all(tr.t_arrive[applied] >= tr.t_compute_end[applied]) and np.all(tr.t_read[applied] <= tr.t_compute_start[applied])
    for w in range(sc.num_workers):  # a worker computes one thing at a time
        mine = np.flatnonzero((tr.worker == w) & np.isfinite(tr.t_compute_end))
        assert np.all(tr.t_compute_start[mine[1:]] >= tr.t_compute_end[mine[:-1]] - 1e-12)
    # The device never runs more than its capacity: total speed <= 2.5 at every instant.
    assert all(0 <= b <= result.sim_time for b in result.busy)


def test_scenario_keys_round_trip_and_errors(tmp_path) -> None:
    path = tmp_path / "shared.toml"
    path.write_text('[[devices]]\nname = "cpu"\ncapacity = 2\n[[workers]]\ncount = 3\ndevice = "cpu"\n')
    sc = load_scenario(path)
    assert sc.devices == (Device("cpu", 2.0),) and sc.workers[0].device == "cpu"
    (tmp_path / "again.toml").write_text(dumps_scenario(sc))
    assert load_scenario(tmp_path / "again.toml", ["name=shared"]) == sc
    assert load_scenario(path, ["devices[0].capacity=4"]).devices[0].capacity == 4.0
    cases = {
        "capacity": ({"devices": [{"name": "cpu", "capacity": 0}]}, "devices[0].capacity = 0: must be > 0"),
        "unknown": ({"devices": [{"name": "gpu"}], "workers": [{"count": 2, "device": "gpu0"}]},
                    "workers[0].device = 'gpu0': unknown device; known devices: gpu (did you mean 'gpu'?)"),
        "none defined": ({"workers": [{"count": 2, "device": "cpu"}]}, "no devices are defined; add [[devices]]"),
        "duplicate": ({"devices": [{"name": "a"}, {"name": "a"}]}, "devices[1].name = 'a': duplicate name"),
        "slowdowns": ({"devices": [{"name": "a"}], "workers": [{"count": 1, "device": "a", "slowdowns": [{"start": 0, "end": 1, "factor": 2}]}]},
                      "workers[0].slowdowns"),
        "rack slowdowns": ({"devices": [{"name": "a"}], "racks": [{"name": "r", "slowdowns": [{"start": 0, "end": 1, "factor": 2}]}],
                            "workers": [{"count": 1, "device": "a", "rack": "r"}]}, "workers[0].rack = 'r': rack 'r' has slowdowns"),
        "no name": ({"devices": [{"capacity": 2}]}, "devices[0].name: missing"),
        "bad type": ({"devices": [{"name": "a", "capacity": "two"}]}, "devices[0].capacity = 'two': must be a number"),
    }
    for label, (tree, message) in cases.items():
        with pytest.raises(ScenarioError) as err:
            scenario_from_dict(tree)
        assert message in str(err.value), label
