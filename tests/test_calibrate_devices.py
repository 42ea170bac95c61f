"""Calibrating the device model: work read back from the computations' overlap, the capacity that
explains a trace, and the AIC choice between it and independent compute times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asgd_sim.cli import main
from asgd_sim.runner import run_scenario
from asgd_sim.scenario.files import load_scenario, scenario_from_dict
from asgd_sim.studies.calibrate_devices import Overlap

# Six workers of lognormal work on a device of capacity 2, lock-free server: each computation
# stretches with how many others run at once. The latency (as long as a computation) leaves the
# device under capacity now and then: a device that is always over-subscribed shows only the ratio
# of work to capacity (capacity 1.7 and work 0.0085 make the same trace as 2 and 0.01).
SHARED = {
    "run": {"until_updates": 3000},
    "workers": [{"count": 6, "compute": {"dist": "lognormal", "mean": 0.01, "cv": 0.3}, "device": "gpu"}],
    "devices": [{"name": "gpu", "capacity": 2.0}],
    "network": {"latency": {"dist": "exponential", "mean": 0.01}, "bandwidth": float("inf"), "server_bandwidth": float("inf")},
    "server": {"apply_time": 0.0, "lock": "none"},
    "model": {"param_bytes": 1000.0},
}
# The same workers, each on its own: independent compute times.
ALONE = {**SHARED, "workers": [{"count": 6, "compute": {"dist": "lognormal", "mean": 0.01, "cv": 0.3}}], "devices": []}


def test_work_is_the_integral_of_the_shared_rate_worked_out_by_hand() -> None:
    # Capacity 1. Spans [0, 2] and [0, 2]: both at 1/2 throughout, work 1 each, rate 1/2 at the end.
    # Spans [0, 1.5] and [0.5, 2.5]: the first runs alone to 0.5 then at 1/2 (work 0.5 + 0.5),
    # the second at 1/2 to 1.5 then alone (0.5 + 1.0), ending at full speed.
    work, ended = Overlap(np.array([0.0, 0.0]), np.array([2.0, 2.0])).work(1.0)
    assert work.tolist() == [1.0, 1.0] and ended.tolist() == [0.5, 0.5]
    work, ended = Overlap(np.array([0.0, 0.5]), np.array([1.5, 2.5])).work(1.0)
    assert work.tolist() == [1.0, 1.5] and ended.tolist() == [0.5, 1.0]
    # Capacity 3 never fills with two: work is the duration. Capacity 0.5: one alone runs at 1/2.
    work, _ = Overlap(np.array([0.0, 0.5]), np.array([1.5, 2.5])).work(3.0)
    assert work.tolist() == [1.5, 2.0]
    work, _ = Overlap(np.array([0.0]), np.array([2.0])).work(0.5)
    assert work.tolist() == [1.0]


def test_calibration_recovers_a_shared_device_and_keeps_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    run_scenario(scenario_from_dict(SHARED, name="shared"), run_dir, timing_only=True)
    # The calibration sees the real scenario without its devices (a real run's file names none).
    (run_dir / "scenario.toml").write_text((run_dir / "scenario.toml").read_text().replace('device = "gpu"', ""))
    assert main(["calibrate", str(run_dir), "--out", str(tmp_path / "cal.toml")]) == 0
    out = capsys.readouterr().out
    assert "device model AIC" in out and "kept: the device model" in out
    cal = load_scenario(tmp_path / "cal.toml")
    assert len(cal.devices) == 1 and cal.devices[0].capacity == pytest.approx(2.0, rel=0.03)
    assert all(g.device == cal.devices[0].name for g in cal.workers)
    for g in cal.workers:
        assert g.compute.mean == pytest.approx(0.01, rel=0.05) and g.compute.cv == pytest.approx(0.3, rel=0.15)


def test_independent_workers_keep_independent_compute_times(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    run_scenario(scenario_from_dict(ALONE, name="alone"), run_dir, timing_only=True)
    assert main(["calibrate", str(run_dir), "--out", str(tmp_path / "cal.toml")]) == 0
    assert "not kept: independent compute times" in capsys.readouterr().out
    cal = load_scenario(tmp_path / "cal.toml")
    assert cal.devices == () and all(g.device is None for g in cal.workers)
    assert main(["calibrate", str(run_dir), "--out", str(tmp_path / "forced.toml"), "--devices", "always", "--quiet"]) == 0
    forced = load_scenario(tmp_path / "forced.toml")
    assert forced.devices[0].capacity >= 5.0  # nothing stretched: as many at once as ever ran together


def test_fidelity_reports_both_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    run_scenario(scenario_from_dict(SHARED, name="shared"), run_dir, timing_only=True)
    assert main(["fidelity", str(run_dir), "--timing-only", "--seeds", "2"]) == 0
    table = capsys.readouterr().out
    assert "independent compute times:" in table and "device model, capacity" in table and "(kept)" in table
    report = json.loads((run_dir / "fidelity.json").read_text())
    assert report["kept"] == "device"
    # The device model predicts its own kind of run; independent times miss the stretching's correlation.
    assert report["device"]["throughput_error"] <= 0.03 and report["device"]["staleness_ks"] <= 0.05
    assert report["throughput_error"] == report["device"]["throughput_error"]
