"""The devices backend: real threads on real JAX devices, the simulator's trace, exact replays.

Runs that need several devices run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (JAX reads it once, at start, and other test
files have started it in this process already). Short emulated runs use this process's device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real_time  # real runs: their assertions read wall-clock times

from asgd_sim.cli import main
from asgd_sim.results.summary import summarize_trace
from asgd_sim.scenario.files import scenario_from_dict
from asgd_sim.trace import APPLIED, CANCELLED, DROPPED, Trace

from helpers import FORCED_DEVICES, ROOT, check_trace, forced_env, lock_waits_per_push, replay_max_diff


def run_python(code: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=forced_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


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


@pytest.mark.slow
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
    # Workers that take local steps, and the modern methods (algorithms.modern).
    "local_sgd": ["algorithm.kind=local_sgd", "algorithm.local_steps=3", "server.shards=2", "optimizer.name=adam",
                  "optimizer.learning_rate=0.01", "algorithm.local_learning_rate=0.1"],
    "easgd": ["algorithm.kind=easgd", "algorithm.local_steps=2", "server.shards=2", "algorithm.elastic_alpha=0.3"],
    # (a push dropped on one shard only still leaves its worker the local steps there, as simulated)
    "easgd_drop_stale": ["algorithm.kind=easgd", "algorithm.local_steps=2", "server.shards=2", "algorithm.drop_staleness_above=1"],
    "fedbuff": ["algorithm.kind=fedbuff", "algorithm.k=2", "algorithm.local_steps=2"],
    "fedasync": ["algorithm.kind=fedasync", "algorithm.local_steps=2", "server.shards=2", "algorithm.mixing_decay=polynomial"],
    "rennala": ["algorithm.kind=rennala", "algorithm.k=3"],
    "ringmaster": ["algorithm.kind=ringmaster", "algorithm.delay_threshold=2"],
    "ringmaster_stops": ["algorithm.kind=ringmaster", "algorithm.delay_threshold=2", "algorithm.stops=true"],
}
LOCAL_STEPS = {"local_sgd": 3, "easgd": 2, "easgd_drop_stale": 2, "fedbuff": 2, "fedasync": 2}


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
        check_local_steps(trace, LOCAL_STEPS.get(name, 1))
        if name == "local_sgd":  # every worker's push of 3 local steps, from the round's version
            assert np.all(members == 4 * 3) and np.all(trace.staleness[applied] == 0)
        if name in ("easgd", "easgd_drop_stale", "fedasync"):  # one push per update, alone
            assert np.all(members == 2)
        if name == "easgd_drop_stale":
            assert trace.staleness[applied].max() <= 1 and (trace.fate == DROPPED).any()
        if name == "fedbuff":  # 2 pushes of 2 steps; a push weighs 1/sqrt(1 + staleness) / 2 (the policy
            # hears the server's versions: a stale push weighs less)
            assert np.all(members == 4) and trace.member_weight.max() <= 0.5 and trace.member_weight.min() < 0.49
        if name == "rennala":
            assert np.all(members == 3) and np.all(trace.staleness[applied] == 0)
        if name.startswith("ringmaster"):  # a gradient of delay >= R = 2 is never applied
            assert trace.staleness[applied].max() <= 1 and trace.staleness[applied].max() >= 1
        if name == "ringmaster_stops":  # computations that saw R updates were stopped (and restarted)
            assert (trace.fate == CANCELLED).sum() > 5
        # The real server's lock wait is per push too (request to holding every lock it needs).
        waits = lock_waits_per_push(trace, global_lock="server.lock=global" in overrides)
        assert summarize_trace(trace, 1.0)["lock_wait_mean"] == pytest.approx(float(np.mean(waits)), rel=1e-12, abs=1e-15)


def check_local_steps(trace: Trace, steps: int) -> None:
    """Each push is ``steps`` gradient rows of one worker, consecutive local steps from one read,
    each with its own compute times, one after the other."""
    assert np.all(trace.local_step == trace.k % steps)
    pushed = ~np.isnan(trace.t_arrive)
    for w in np.unique(trace.worker):
        mine = np.flatnonzero((trace.worker == w) & pushed)
        assert len(mine) % steps == 0
        for push in mine.reshape(-1, steps):
            assert np.all(trace.read_version[push] == trace.read_version[push[0]])
            assert np.all(trace.t_arrive[push] == trace.t_arrive[push[0]])
            assert np.all(np.diff(trace.t_compute_start[push]) > 0)
            assert np.all(trace.t_compute_end[push][:-1] <= trace.t_compute_start[push][1:])


def test_emulated_timing_follows_the_scenario(tmp_path: Path) -> None:
    from asgd_sim.runner import run_scenario

    latency, compute, apply = 0.005, 0.03, 0.002
    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "workers": [{"count": 2, "compute": compute}], "run": {"until_updates": 30, "eval_every": 10},
        "network": {"latency": latency, "bandwidth": float("inf")}, "server": {"apply_time": apply},
    }, name="emulated")
    result = run_scenario(sc, tmp_path / "run", backend="devices", emulate=True)
    trace = result.trace
    applied = trace.fate == APPLIED
    segments = {  # what each emulated sleep took, for every applied gradient
        "compute": (trace.t_compute_end - trace.t_compute_start)[applied],
        "parameters back": (trace.t_compute_start - trace.t_read)[applied],
        "push": (trace.t_arrive - trace.t_compute_end)[applied],
        "server hold": trace.u_applied - trace.u_lock,
    }
    emulated = {"compute": compute, "parameters back": latency, "push": latency, "server hold": apply}
    # Floors: a sleep never ends early, so each emulated delay is a hard lower bound however loaded
    # the machine is (1e-4: rounding of differences of clock readings).
    for name, took in segments.items():
        assert np.all(took >= emulated[name] - 1e-4), (name, np.quantile(took, [0, 0.5, 1]))
    # Ceilings allow scheduling overhead per emulated sleep: the thread's wake-up, the GIL, the real
    # gradient, the server's bookkeeping. Measured: ~0.5 ms per sleep on an idle 2-core machine,
    # < 1.2 ms with both cores busy (another process spinning on each). SLACK = 3.5 ms per sleep is
    # 3x that, and is the 0.75 rate bound below (4 sleeps in a 42 ms cycle: 14 ms per cycle).
    # Medians, so that the few sleeps a load spike delays do not decide.
    SLACK = 0.0035
    for name, took in segments.items():
        assert np.median(took) <= emulated[name] + SLACK, (name, np.quantile(took, [0, 0.5, 1]))
    assert np.median(segments["compute"]) < 0.04  # (the bound this test always had)
    # Each worker's chain against the sum of its emulated delays: its first pull request, then per
    # gradient the parameters back, compute, the push and the server's hold (0.042 s). It cannot end
    # sooner; it may end later by SLACK per sleep (1 + 4 per gradient) plus waiting for the lock
    # while the other worker's update is held (at most one hold per gradient).
    cycle = latency + compute + latency + apply
    for w in range(2):
        mine = np.flatnonzero((trace.worker == w) & applied)
        n = len(mine)
        assert np.array_equal(trace.k[mine], np.arange(n)) and n >= 10  # both workers took part all along
        chain = latency + n * cycle
        end = float(trace.t_applied[mine].max())
        assert chain - 1e-3 <= end <= chain + (1 + 4 * n) * SLACK + n * apply, (w, n, chain, end)
    # The whole run: 2 workers, one update per 0.042 s cycle each, ~47.6 updates/s at most (no faster
    # than the emulated cluster, 2 % for the clock), at least 0.75 of it (SLACK per sleep, above).
    rate = result.summary["updates_per_s"]
    assert 0.75 * 2 / cycle <= rate <= 1.02 * 2 / cycle, rate
    assert result.summary["backend"]["emulate"] is True


@pytest.mark.parametrize("argv, message", [
    (["--backend", "devices", "--set", "server.shards=2", "--set", "server.atomic=true", "--set", "server.lock_order=random"],
     "server.lock_order"),
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


USER_ALGORITHM = """
[run]
until_updates = 60
eval_every = 20
[[workers]]
count = 4
compute = 0.01
[server]
apply_time = 0.004
[model]
name = "logreg"
[algorithm]
kind = "examples.user_algorithm:GroupCommitSGD"
options = { max_batch = 3 }
"""


@pytest.mark.slow
def test_the_user_algorithm_example_runs_simulated_and_for_real_and_replays_exactly(tmp_path: Path) -> None:
    # examples/user_algorithm.py (group commit): pushes that arrive while an update is applied wait
    # and are averaged into the next one, at most max_batch of them, in the simulator and for real.
    scenario = tmp_path / "user.toml"
    scenario.write_text(USER_ALGORITHM)
    runs = {"sim": [], "devices": ["--backend", "devices", "--emulate"]}
    for name, argv in runs.items():
        assert main(["run", str(scenario), "--quiet", "--out", str(tmp_path / name), *argv]) == 0, name
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["stopped"] == "until_updates" and summary["updates"] == 60, name
        trace = Trace.load(tmp_path / name)
        check_trace(trace)
        members = np.diff(trace.member_offsets)
        assert members.max() > 1 and members.max() <= 3, (name, np.bincount(members))  # groups formed, capped
        for row in range(len(members)):  # a group's update is the average of its gradients
            np.testing.assert_allclose(trace.members(row)[1], 1.0 / members[row])
    assert Trace.load(tmp_path / "devices").meta["backend"] == "devices"
    diff, _ = replay_max_diff(tmp_path / "devices")
    assert diff <= 1e-6, diff


def test_a_real_runs_time_to_target_is_located_by_a_replay_of_its_trace(tmp_path: Path) -> None:
    # A real run evaluates its parameters every 20 updates; where it crossed the target between two
    # evaluations is found by replaying its trace (which reproduces the real parameters). The
    # reference: the replay of the same trace evaluated after every update, with an unreachable target.
    from asgd_sim.runner import replay, run_scenario

    sc = scenario_from_dict({"model": {"name": "logreg"}, "workers": [{"count": 3, "compute": 0.0}],
                             "run": {"until_updates": 120, "eval_every": 20, "target_accuracy": 0.75},
                             "optimizer": {"learning_rate": 0.1}}, name="real-target")
    result = run_scenario(sc, tmp_path / "run", backend="devices")
    summary = result.summary
    curve = replay(tmp_path / "run", ["run.eval_every=1", "run.target_accuracy=1.0"]).metrics
    acc = curve["test_accuracy"]
    seen = next(u for u in range(0, len(acc), 20) if acc[u] >= 0.75)
    first = next(u for u in range(max(seen - 19, 0), seen + 1) if acc[u] >= 0.75)
    assert summary["updates_to_target"] == first and summary["time_to_target"] == curve["sim_time"][first]
    assert summary["time_to_target_exact"] and first in result.metrics["update"]
    if first % 20:  # (the run's own evaluations stay; the located one is added between them)
        assert summary["target_search"]["between"] == [seen - 20, seen] and list(result.metrics["update"]).count(first) == 1
