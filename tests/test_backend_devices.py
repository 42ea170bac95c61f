"""The devices backend: real threads on real JAX devices, the simulator's trace, exact replays.

Runs that need several devices run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (JAX reads it once, at start, and other test
files have started it in this process already). Short emulated runs use this process's device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from asgd_sim.cli import main
from asgd_sim.scenario.files import scenario_from_dict
from asgd_sim.trace import APPLIED, DROPPED, Trace

FORCED_DEVICES = 4
ROOT = Path(__file__).resolve().parents[1]


def forced_env(devices: int = FORCED_DEVICES) -> dict[str, str]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return env


def run_python(code: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=forced_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def replay_max_diff(run_dir: Path) -> tuple[float, object]:
    from jax.flatten_util import ravel_pytree

    from asgd_sim.runner import replay

    result = replay(run_dir)
    real = np.load(run_dir / "final_params.npy")
    return float(np.abs(real - np.asarray(ravel_pytree(result.params)[0])).max()), result


def check_trace(trace: Trace) -> None:
    """The simulator's invariants hold for a real trace."""
    applied = trace.fate == APPLIED
    t = trace.times
    for a, b in (("t_pull", "t_read"), ("t_read", "t_compute_start"), ("t_compute_start", "t_compute_end"),
                 ("t_compute_end", "t_arrive"), ("t_arrive", "t_lock"), ("t_lock", "t_applied")):
        assert np.all(t[a][applied] <= t[b][applied] + 1e-9), (a, b)
    for shard in range(trace.shards):
        rows = np.flatnonzero(trace.u_shard == shard)
        assert np.array_equal(trace.u_version[rows], np.arange(1, len(rows) + 1))  # one version per update, in order
        assert np.all(np.diff(trace.u_applied[rows]) >= 0)
        for r in rows:  # staleness = version just before the update - version read
            gids, _ = trace.members(r)
            assert np.all(trace.u_version[r] - 1 - trace.read_version[gids, shard] <= trace.staleness[gids])
    for w in np.unique(trace.worker):  # a worker's reads never go back in time
        mine = trace.worker == w
        assert np.all(np.diff(trace.read_version[mine], axis=0) >= 0)
        assert np.array_equal(trace.k[mine], np.arange(mine.sum()))


SCENARIO = """
[run]
until_updates = 200
eval_every = 50
[[workers]]
count = 4
compute = 0.02
[model]
name = "logreg"
[optimizer]
learning_rate = 0.1
"""


def test_devices_run_on_four_devices_and_replay_reproduces_it(tmp_path: Path) -> None:
    scenario = tmp_path / "real.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "asgd_sim.cli", "run", str(scenario), "--backend", "devices", "--out", str(out)],
                          env=forced_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend    devices" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "until_updates" and summary["updates"] == 200
    assert len(set(summary["backend"]["worker_devices"])) == FORCED_DEVICES
    assert summary["staleness"]["mean"] > 0  # 4 real workers: gradients do arrive stale
    for name in ("gradients.parquet", "updates.parquet", "metrics.csv", "timeline.json", "scenario.toml", "loss_vs_time.png"):
        assert (out / name).is_file(), name
    trace = Trace.load(out)
    check_trace(trace)
    assert trace.meta["backend"] == "devices"
    diff, replayed = replay_max_diff(out)
    assert diff <= 1e-6, diff
    real_loss = np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1)[:, 2]
    np.testing.assert_allclose(replayed.metrics["train_loss"], real_loss, rtol=1e-5)
    assert replayed.summary["updates"] == 200


ALGORITHMS = {
    "sync": ["algorithm.kind=sync"],
    "backup": ["algorithm.kind=sync", "algorithm.backup=1"],
    "k_async": ["algorithm.kind=k_async", "algorithm.k=2"],
    "k_batch_sync": ["algorithm.kind=k_batch_sync", "algorithm.k=3"],
    "k_batch_async": ["algorithm.kind=k_batch_async", "algorithm.k=2"],
    "ssp": ["algorithm.kind=ssp", "algorithm.staleness_bound=1"],
    "drop_stale_shards": ["server.shards=2", "server.lock=global", "algorithm.drop_staleness_above=1"],
    "rw_atomic_adam": ["server.shards=2", "server.lock=rw", "server.atomic=true", "optimizer.name=adam", "optimizer.learning_rate=0.01"],
    "lock_free_shards": ["server.shards=3", "server.lock=none"],
}


@pytest.mark.slow
def test_every_algorithm_runs_for_real_and_replays_exactly(tmp_path: Path) -> None:
    run_python(f"""
        import json, pathlib
        import numpy as np
        from jax.flatten_util import ravel_pytree
        from asgd_sim.scenario.files import scenario_from_dict, dump_scenario
        from asgd_sim.backends.devices import run_devices
        base = {{"model": {{"name": "logreg"}}, "workers": [{{"count": 4, "compute": 0.01}}],
                "run": {{"until_updates": 60, "eval_every": 20}}, "optimizer": {{"learning_rate": 0.1}}}}
        for name, overrides in {ALGORITHMS!r}.items():
            sc = scenario_from_dict(base, overrides, name=name)
            result = run_devices(sc)  # (no plots: only what a replay needs)
            out = pathlib.Path({str(tmp_path)!r}) / name
            out.mkdir()
            dump_scenario(sc, out / "scenario.toml")
            result.trace.save(out)
            np.save(out / "final_params.npy", np.asarray(ravel_pytree(result.params)[0]))
            (out / "summary.json").write_text(json.dumps({{"stopped": result.summary["stopped"]}}))
    """)
    for name, overrides in ALGORITHMS.items():
        out = tmp_path / name
        summary = json.loads((out / "summary.json").read_text())
        assert summary["stopped"] == "until_updates", name
        trace = Trace.load(out)
        check_trace(trace)
        diff, _ = replay_max_diff(out)
        assert diff <= 1e-6, (name, diff)
        applied = trace.fate == APPLIED
        members = np.diff(trace.member_offsets)
        if name == "sync":
            assert np.all(trace.staleness[applied] == 0) and np.all(members == 4)
        if name == "backup":  # the first 3 of 4 gradients make the update; the 4th is cancelled
            assert np.all(members == 3) and np.all(trace.staleness[applied] == 0)
        if name in ("k_async", "k_batch_async"):
            assert np.all(members == 2)
        if name == "k_batch_sync":
            assert np.all(members == 3) and np.all(trace.staleness[applied] == 0)
        if name == "drop_stale_shards":
            assert trace.staleness[applied].max() <= 1 and (trace.fate == DROPPED).any()


def test_emulated_timing_follows_the_scenario(tmp_path: Path) -> None:
    from asgd_sim.runner import run_scenario

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "workers": [{"count": 2, "compute": 0.03}], "run": {"until_updates": 30, "eval_every": 10},
        "network": {"latency": 0.005, "bandwidth": float("inf")}, "server": {"apply_time": 0.002},
    }, name="emulated")
    result = run_scenario(sc, tmp_path / "run", backend="devices", emulate=True)
    trace = result.trace
    applied = trace.fate == APPLIED
    compute = (trace.t_compute_end - trace.t_compute_start)[applied]
    assert np.all(compute >= 0.03 - 1e-4) and np.median(compute) < 0.04, np.quantile(compute, [0, 0.5, 1])
    assert np.all((trace.t_compute_start - trace.t_read)[applied] >= 0.005 - 1e-4)  # parameters travel back
    assert np.all((trace.t_arrive - trace.t_compute_end)[applied] >= 0.005 - 1e-4)  # the push travels
    assert np.all(trace.u_applied - trace.u_lock >= 0.002 - 1e-4)  # the server holds each update
    # Each worker's cycle is latency + compute + latency + apply = 0.042 s: 2 workers, ~47.6 updates/s
    # at most (no faster than the emulated cluster; slower only by overheads and a loaded machine).
    rate = result.summary["updates_per_s"]
    assert 0.75 * 2 / 0.042 <= rate <= 1.02 * 2 / 0.042, rate
    assert result.summary["backend"]["emulate"] is True


@pytest.mark.parametrize("argv, message", [
    (["--backend", "devices", "--set", "algorithm.kind=local_sgd"], "algorithm.kind"),
    (["--emulate"], "--emulate"),
    (["--backend", "devices", "--resume"], "--resume"),
    (["--backend", "devices", "--ray-address", "127.0.0.1:6379"], "--ray-address"),
])
def test_real_run_errors_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    assert main(["run", str(scenario), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
