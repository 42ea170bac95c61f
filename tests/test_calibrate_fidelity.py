"""Calibration (maximum-likelihood fits chosen by AIC) and the simulation-vs-reality report."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asgd_sim.studies.calibrate import calibrate_run, fit_distribution, lock_handoffs
from asgd_sim.cli import main
from asgd_sim.scenario.distributions import Constant, Exponential, Gamma, LogNormal, ShiftedExponential
from asgd_sim.timing.engine import simulate_timing
from asgd_sim.runner import run_scenario
from asgd_sim.scenario.files import load_scenario, scenario_from_dict

from helpers import ROOT, forced_env, group, make_scenario


@pytest.mark.parametrize("truth, chosen", [
    (LogNormal(0.03, 0.3), "lognormal"),
    (Gamma(1.0, 0.5), "gamma"),
    (ShiftedExponential(0.02, 0.01), "shifted_exponential"),
    (Exponential(0.05), "exponential"),
    (Constant(0.04), "constant"),
])
def test_fits_recover_the_distribution_and_its_moments(truth, chosen) -> None:
    x = truth.sample(np.random.default_rng(1), 3000)
    dist, info = fit_distribution(x)
    assert info["chosen"] == chosen, info["candidates"]
    assert dist.mean == pytest.approx(truth.mean, rel=0.05)
    if hasattr(truth, "cv"):
        assert dist.cv == pytest.approx(truth.cv, rel=0.1)


def test_a_sample_no_family_fits_is_kept_as_measured() -> None:
    rng = np.random.default_rng(2)
    bimodal = np.concatenate([rng.normal(0.02, 0.001, 1000), rng.normal(0.08, 0.001, 1000)])
    dist, info = fit_distribution(bimodal)
    assert info["chosen"] == "empirical" and dist.mean == pytest.approx(bimodal.mean(), rel=1e-3)


TRUTH = {
    "run": {"until_updates": 3000},
    "workers": [{"name": "fast", "count": 3, "compute": {"dist": "lognormal", "mean": 0.03, "cv": 0.25}},
                {"name": "slow", "count": 1, "compute": {"dist": "gamma", "mean": 0.09, "cv": 0.5}}],
    "network": {"latency": {"dist": "shifted_exponential", "shift": 0.001, "mean": 0.002}, "bandwidth": float("inf"),
                "server_bandwidth": float("inf")},
    "server": {"apply_time": 0.0005},
    "model": {"param_bytes": 1000.0},
}


def test_calibration_of_a_known_cluster_recovers_it(tmp_path: Path) -> None:
    """A simulated run stands in for a real one whose truth we know."""
    run_dir = tmp_path / "run"
    run_scenario(scenario_from_dict(TRUTH, name="truth"), run_dir, timing_only=True)
    assert main(["calibrate", str(run_dir), "--out", str(tmp_path / "cal.toml"), "--quiet"]) == 0
    cal = load_scenario(tmp_path / "cal.toml")
    assert [g.count for g in cal.workers] == [1, 1, 1, 1]
    for group, (mean, cv) in zip(cal.workers, [(0.03, 0.25)] * 3 + [(0.09, 0.5)]):
        assert group.compute.mean == pytest.approx(mean, rel=0.05)
        assert group.compute.cv == pytest.approx(cv, rel=0.15)
    assert isinstance(cal.network.latency, ShiftedExponential)
    assert cal.network.latency.shift == pytest.approx(0.001, rel=0.02) and cal.network.latency.mean == pytest.approx(0.003, rel=0.05)
    assert cal.server.apply_time == Constant(pytest.approx(0.0005))
    assert cal.server.lock_handoff.mean == pytest.approx(0.0, abs=1e-8)  # the simulated server hands over at once
    assert cal.algorithm == scenario_from_dict(TRUTH).algorithm and cal.run.until_updates == 3000


@pytest.mark.parametrize("lock, shards, atomic", [("shard", 1, False), ("global", 2, False), ("shard", 3, False),
                                                  ("rw", 2, True)])
def test_lock_handoffs_are_read_back_from_the_trace(lock: str, shards: int, atomic: bool) -> None:
    # The engine starts every update that waited for a lock 0.2 ms after its release; the trace
    # alone must give back exactly that gap for each, one lock's sequence of holds at a time
    # (the global lock: all rows; shard locks: each shard's rows; atomic: whole updates).
    sc = make_scenario(group(0.001, 8), apply=0.0005, handoff=0.0002, shards=shards, lock=lock, atomic=atomic,
                       updates=400)
    gaps = lock_handoffs(simulate_timing(sc).trace, sc.server)
    assert gaps.size >= 300
    assert gaps == pytest.approx(np.full(gaps.size, 0.0002), abs=1e-12)
    lock_free = dataclasses.replace(sc, server=dataclasses.replace(sc.server, lock="none"))
    assert lock_handoffs(simulate_timing(lock_free).trace, lock_free.server).size == 0


def test_calibration_recovers_a_lock_bound_servers_handoff(tmp_path: Path) -> None:
    # 8 fast workers against one lock: the server sets the pace, one update per apply + hand-over.
    truth = {**TRUTH, "run": {"until_updates": 2000},
             "workers": [{"count": 8, "compute": {"dist": "lognormal", "mean": 0.002, "cv": 0.2}}],
             "network": {"latency": 0.0001, "bandwidth": float("inf"), "server_bandwidth": float("inf")},
             "server": {"apply_time": 0.0005, "lock_handoff": {"dist": "lognormal", "mean": 0.0003, "cv": 0.5}}}
    run_dir = tmp_path / "run"
    run_scenario(scenario_from_dict(truth, name="lock-bound"), run_dir, timing_only=True)
    cal, _ = calibrate_run(run_dir)
    assert cal.server.lock_handoff.mean == pytest.approx(0.0003, rel=0.05)
    assert cal.server.lock_handoff.cv == pytest.approx(0.5, rel=0.15)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["updates_per_s"] == pytest.approx(1 / (0.0005 + 0.0003), rel=0.03)


def test_fidelity_of_a_simulated_run_against_itself(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    run_scenario(scenario_from_dict(TRUTH, name="truth"), run_dir, timing_only=True)
    assert main(["fidelity", str(run_dir), "--timing-only", "--seeds", "3"]) == 0
    table = capsys.readouterr().out
    assert "throughput (updates/s)" in table and "staleness KS distance" in table
    report = json.loads((run_dir / "fidelity.json").read_text())
    assert report["seeds"] == 3
    assert report["throughput_error"] <= 0.05 and report["staleness_ks"] <= 0.05
    assert (run_dir / "calibrated.toml").is_file()


def test_calibrate_rejects_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["calibrate", str(tmp_path), "--out", str(tmp_path / "x.toml")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.real_time
def test_fidelity_of_a_real_emulated_run_meets_the_targets(tmp_path: Path) -> None:
    """Devices backend, 4 forced CPU devices, 6 workers of ~30 ms (emulated): the calibrated
    simulation predicts throughput within 5 % and the staleness distribution within KS 0.05."""
    scenario = tmp_path / "real.toml"
    scenario.write_text("""
[run]
until_updates = 1500
eval_every = 250
[[workers]]
count = 5
compute = { dist = "lognormal", mean = 0.03, cv = 0.3 }
[[workers]]
name = "straggler"
count = 1
compute = { dist = "lognormal", mean = 0.06, cv = 0.3 }
[network]
latency = 0.001
[model]
name = "logreg"
""")
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "asgd_sim.cli", "run", str(scenario), "--backend", "devices", "--emulate",
                           "--out", str(run_dir), "--quiet"], env=forced_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from asgd_sim.studies.fidelity import fidelity

    report = fidelity(run_dir, seeds=3, numerics=True)
    assert report["throughput_error"] <= 0.05, report["table"]
    assert report["staleness_ks"] <= 0.05, report["table"]
    assert report["loss_gap_over_band"] < 3, report["table"]
    _, text = calibrate_run(run_dir)
    assert "worker 5" in text
