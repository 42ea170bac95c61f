"""The Ray backend on a local Ray with 2 CPUs: same algorithms, same trace, killed actors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real_time  # real runs: their assertions read wall-clock times

ray = pytest.importorskip("ray")  # an optional extra; `make test` installs it (.[test,ray])

from asgd_sim.scenario.files import scenario_from_dict  # noqa: E402
from asgd_sim.trace import APPLIED, CANCELLED, Trace  # noqa: E402

from helpers import check_trace, replay_max_diff  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_PLATFORMS": "cpu"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_survives_a_killed_worker_actor_and_replays_exactly(local_ray, tmp_path: Path) -> None:
    from asgd_sim.runner import run_scenario

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 1000, "eval_every": 250},
        "workers": [{"count": 3, "compute": 0.015, "failures": {"restart_after": 0.5}}],
    }, name="ray-faults")
    killed = threading.Event()

    def kill_one(actors) -> None:
        def kill() -> None:
            ray.kill(actors.workers[1])
            killed.set()
        threading.Timer(0.5, kill).start()

    out = tmp_path / "run"
    result = run_scenario(sc, out, backend="ray", emulate=True, on_start=kill_one)
    assert killed.is_set()
    assert result.summary["stopped"] == "until_updates" and result.summary["updates"] == 1000
    trace = Trace.load(out)
    check_trace(trace)
    failures = trace.meta["failures"]
    assert [f["worker"] for f in failures] == [1] and "actor died" in failures[0]["error"], [f["error"] for f in failures]
    assert failures[0].get("restarted") is not None, "the restart policy brings the worker back"
    applied = trace.fate == APPLIED
    assert ((trace.worker == 1) & applied & (trace.t_read > failures[0]["restarted"])).sum() > 3
    assert ((trace.worker != 1) & applied & (trace.t_read > failures[0]["t"]) & (trace.t_read < failures[0]["restarted"])).sum() > 10
    diff, _ = replay_max_diff(out)
    assert diff <= 1e-6


@pytest.mark.slow
def test_ray_runs_sync_rounds(local_ray, tmp_path: Path) -> None:
    from asgd_sim.runner import run_scenario

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 40, "eval_every": 20},
        "workers": [{"count": 3, "compute": 0.005}], "algorithm": {"kind": "sync", "backup": 1},
        "server": {"shards": 2, "lock": "global"},
    }, name="ray-sync")
    result = run_scenario(sc, tmp_path / "run", backend="ray")
    trace = result.trace
    check_trace(trace)
    assert np.all(np.diff(trace.member_offsets) == 2) and np.all(trace.staleness[trace.fate == APPLIED] == 0)
    assert (trace.fate == CANCELLED).any(), "the backup worker's gradient of each round is cancelled"
    assert result.summary["backend"]["name"] == "ray"
    diff, _ = replay_max_diff(tmp_path / "run")
    assert diff <= 1e-6


@pytest.mark.slow
def test_ray_shards_are_actors_checkpoint_resume_and_replay_exactly(local_ray, tmp_path: Path) -> None:
    # Two shards with Adam (an optimizer state per shard, checkpointed): every shard's rows,
    # states and updates live in its own actor.
    import os

    from asgd_sim.runner import run_scenario
    from asgd_sim.backends.checkpoint import load_checkpoint

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 130, "eval_every": 40},
        "workers": [{"count": 3, "compute": 0.005}], "server": {"shards": 2, "lock": "shard", "checkpoint_every": 40},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    }, name="ray-shards")
    out = tmp_path / "run"
    result = run_scenario(sc, out, backend="ray")
    assert result.summary["stopped"] == "until_updates" and result.summary["updates"] == 130
    trace = Trace.load(out)
    check_trace(trace)
    assert trace.shards == 2 and trace.staleness[trace.fate == APPLIED].max() > 0
    backend = result.summary["backend"]
    actors = backend["shard_actors"]
    assert [a["shard"] for a in actors] == [0, 1]
    pids = {a["pid"] for a in actors}
    assert len(pids) == 2 and backend["server_pid"] not in pids and os.getpid() not in pids  # a process per shard
    for a in actors:  # each shard's updates were computed by its actor (one may be cut short by the stop)
        recorded = int((trace.u_shard == a["shard"]).sum())
        assert recorded >= 130 and recorded <= a["applied"] <= recorded + 1, (a, recorded)
    diff, _ = replay_max_diff(out)
    assert diff <= 1e-6, diff
    ckpt = load_checkpoint(out)
    assert ckpt.updates == 120 and min(ckpt.versions) == 120 and len(ckpt.state_leaves[1]) > 1

    resumed = run_scenario(sc, out, backend="ray", resume=True)  # from the checkpoint at 120 (its Adam states included)
    assert resumed.summary["backend"]["resumed_from"]["updates"] == 120 and resumed.summary["updates"] == 130
    trace = Trace.load(out)
    check_trace(trace)
    diff, _ = replay_max_diff(out)
    assert diff <= 1e-6, diff


@pytest.mark.slow
def test_ray_dc_asgd_shard_actors_use_the_rows_each_gradient_read(local_ray, tmp_path: Path) -> None:
    # DC-ASGD compensates a gradient with (current row - the row it was computed at): the workers
    # send their read rows to the shard actors with the gradient chunks. The replay recomputes
    # every update from the trace's read versions, so it matches only if each actor used the
    # rows the gradient really read.
    from asgd_sim.runner import run_scenario

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 90, "eval_every": 30},
        "workers": [{"count": 3, "compute": 0.005}], "server": {"shards": 2, "lock": "shard"},
        "optimizer": {"name": "sgd", "learning_rate": 0.5, "dc_lambda": 2.0},
    }, name="ray-dc")
    out = tmp_path / "run"
    result = run_scenario(sc, out, backend="ray")
    assert result.summary["updates"] == 90 and not result.summary["diverged"]
    trace = Trace.load(out)
    check_trace(trace)
    assert trace.staleness[trace.fate == APPLIED].max() > 0  # stale reads: something to compensate
    diff, _ = replay_max_diff(out)
    assert diff <= 1e-6, diff
    # The compensation mattered: the same schedule without it ends elsewhere.
    from jax.flatten_util import ravel_pytree

    from asgd_sim.runner import replay

    real = np.load(out / "final_params.npy")
    plain = float(np.abs(real - np.asarray(ravel_pytree(replay(out, ["optimizer.dc_lambda=0"]).params)[0])).max())
    assert plain > 1e-4, plain


@pytest.mark.slow
def test_ray_workers_take_local_steps_and_shard_actors_keep_easgd_models(local_ray, tmp_path: Path) -> None:
    # FedBuff (model deltas through the server rule) and EASGD (each worker's own model, per shard in
    # the shard actors; a worker reads its own) on two shard actors, with exact replays; EASGD's
    # models are checkpointed, so a resumed run still replays exactly.
    from asgd_sim.backends.checkpoint import load_checkpoint
    from asgd_sim.runner import run_scenario

    base = {"model": {"name": "logreg"}, "run": {"until_updates": 50, "eval_every": 25},
            "workers": [{"count": 3, "compute": 0.005}], "server": {"shards": 2, "lock": "shard", "checkpoint_every": 40}}
    cases = {"fedbuff": {"kind": "fedbuff", "k": 2, "local_steps": 2},
             "easgd": {"kind": "easgd", "local_steps": 2, "elastic_alpha": 0.3}}
    for name, algorithm in cases.items():
        sc = scenario_from_dict({**base, "algorithm": algorithm}, name=f"ray-{name}")
        out = tmp_path / name
        result = run_scenario(sc, out, backend="ray")
        assert result.summary["stopped"] == "until_updates" and result.summary["updates"] == 50, name
        trace = Trace.load(out)
        check_trace(trace)
        assert np.all(trace.local_step == trace.k % 2), name
        assert np.all(np.diff(trace.member_offsets) == (4 if name == "fedbuff" else 2)), name
        diff, _ = replay_max_diff(out)
        assert diff <= 1e-6, (name, diff)
    assert trace.staleness[trace.fate == APPLIED].max() > 0  # EASGD: the center moved while workers stepped
    ckpt = load_checkpoint(tmp_path / "easgd")
    assert ckpt.updates == 40 and ckpt.models is not None and len(ckpt.models) == 3 and len(ckpt.models[0]) == 2
    resumed = run_scenario(sc, tmp_path / "easgd", backend="ray", resume=True)
    assert resumed.summary["backend"]["resumed_from"]["updates"] == 40 and resumed.summary["updates"] == 50
    check_trace(Trace.load(tmp_path / "easgd"))
    diff, _ = replay_max_diff(tmp_path / "easgd")
    assert diff <= 1e-6, diff


@pytest.mark.slow
def test_sweep_runs_its_points_as_ray_tasks(local_ray, tmp_path: Path) -> None:
    # The same timing sweep through Ray tasks and through local processes gives the same rows
    # (each run is a pure function of its scenario and seed); a rerun finds everything done.
    import pandas as pd

    from asgd_sim.cli import main

    scenario = tmp_path / "tiny.toml"
    scenario.write_text('[run]\nuntil_updates = 100\n[[workers]]\ncount = 3\ncompute = { dist = "exponential", mean = 0.05 }\n'
                        '[model]\nparam_bytes = 1e5\n')
    common = ["sweep", str(scenario), "--timing-only", "--grid", "server.lock=global,none", "--seeds", "2", "--quiet"]
    assert main([*common, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert main([*common, "--jobs", "1", "--out", str(tmp_path / "local")]) == 0
    by_ray = pd.read_parquet(tmp_path / "ray" / "runs.parquet").set_index("run")
    local = pd.read_parquet(tmp_path / "local" / "runs.parquet").set_index("run")
    assert len(by_ray) == 4 and (by_ray["status"] == "ok").all()
    for column in ("updates", "sim_time", "staleness_mean", "lock_wait_mean"):
        assert by_ray[column].sort_index().tolist() == local[column].sort_index().tolist()
    marker = tmp_path / "ray" / "runs" / by_ray.index[0] / "result.json"
    before = marker.stat().st_mtime_ns
    assert main([*common, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert marker.stat().st_mtime_ns == before


def _wait_for(condition, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_ray_coordinator_and_shard_actors_come_back_from_the_last_checkpoint(local_ray, tmp_path: Path) -> None:
    # Kill the coordinator (ray.kill) past the checkpoint at 100 updates, then, once the recovered
    # run is past 200, kill shard 1's process (SIGKILL). Each time the run goes back to its latest
    # checkpoint and on to the end: every update of the final trace replays exactly, what came
    # after each checkpoint is dropped (and listed), and the evaluations taken before survive.
    import os
    import signal

    from asgd_sim.runner import run_scenario

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 400, "eval_every": 50},
        "workers": [{"count": 2, "compute": 0.01}], "server": {"shards": 2, "lock": "shard", "checkpoint_every": 50},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    }, name="ray-recover")
    seen: dict = {"errors": []}

    def updates(actor) -> int:
        return ray.get(actor.status.remote())[1]

    def attack(actors) -> None:
        def go() -> None:
            try:
                first = actors.coordinator
                _wait_for(lambda: updates(first) >= 130)
                ray.kill(first, no_restart=False)
                _wait_for(lambda: actors.coordinator is not first and updates(actors.coordinator) >= 230)
                info = ray.get(actors.shards[1].info.remote())
                seen["shard_pid"] = info["pid"]
                os.kill(info["pid"], signal.SIGKILL)
            except Exception as error:  # noqa: BLE001 - reported by the test below
                seen["errors"].append(repr(error))
        threading.Thread(target=go, daemon=True).start()

    out = tmp_path / "run"
    result = run_scenario(sc, out, backend="ray", emulate=True, on_start=attack)
    assert not seen["errors"], seen["errors"]
    assert result.summary["stopped"] == "until_updates" and result.summary["updates"] == 400
    recoveries = result.summary["backend"]["recoveries"]
    assert [r["lost"] for r in recoveries] == ["the coordinator", "shard 1"], recoveries
    for r in recoveries:  # back to a checkpoint of this run, at most one checkpoint interval behind the loss
        assert r["from_update"] % 50 == 0 and 100 <= r["from_update"] <= r["updates"], r
    assert recoveries[1]["from_update"] >= 200
    trace = Trace.load(out)
    check_trace(trace)
    assert trace.meta["recoveries"] == recoveries
    # The final trace has each version once: what the lost actors did after the checkpoint is gone.
    for shard in (0, 1):
        assert (trace.u_shard == shard).sum() >= 400
    # The new shard 1 is another process; the evaluations before the checkpoints are all there.
    assert {a["shard"]: a["pid"] for a in result.summary["backend"]["shard_actors"]}[1] != seen["shard_pid"]
    assert result.metrics["update"].tolist() == list(range(0, 401, 50))
    diff, _ = replay_max_diff(out)
    assert diff <= 1e-6, diff


def _ray_task_processes(function: str) -> list[int]:
    """Pids of the Ray worker processes now running ``function`` (their title is ray::<function>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(f"ray::{function}".encode()):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_sweep_on_ray_records_a_dead_task_and_retry_failed_completes_it(local_ray, tmp_path: Path) -> None:
    # Two runs; the long one's process is killed every time Ray (re)tries it (SIGKILL, as the
    # OOM killer would): the sweep commits it as failed and goes on, and --retry-failed runs it.
    import json
    import os
    import signal
    import time

    import pandas as pd

    from asgd_sim.cli import main

    scenario = tmp_path / "tiny.toml"
    scenario.write_text('[run]\nuntil_updates = 100\n[[workers]]\ncount = 3\ncompute = { dist = "exponential", mean = 0.05 }\n')
    out = tmp_path / "sweep"
    command = ["sweep", str(scenario), "--timing-only", "--grid", "run.until_updates=50,10000", "--executor", "ray",
               "--out", str(out), "--quiet"]
    done, kills = threading.Event(), []

    def killer() -> None:  # once the short run is committed, kill every process running a sweep task
        while not done.is_set():
            if any(json.loads(p.read_text())["values"]["run.until_updates"] == 50 for p in out.glob("runs/*/result.json")):
                for pid in _ray_task_processes("_run_on_ray_node"):
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert main(command) == 1  # a run failed
    finally:
        done.set()
        thread.join()
    table = pd.read_parquet(out / "runs.parquet").set_index("run")
    assert sorted(table["status"]) == ["error", "ok"]
    failed = table[table["status"] == "error"].iloc[0]
    assert failed["run.until_updates"] == 10000 and "died 3 times" in failed["error"], failed["error"]
    # The first try and Ray's two retries at least (the short run's process may be killed too,
    # between its commit and its return: Ray's retries of it find it committed and keep it).
    assert len(set(kills)) >= 3, kills
    ok_marker = out / "runs" / table.index[table["status"] == "ok"][0] / "result.json"
    before = ok_marker.stat().st_mtime_ns

    assert main([*command, "--retry-failed"]) == 0
    table = pd.read_parquet(out / "runs.parquet").set_index("run")
    assert (table["status"] == "ok").all() and sorted(table["updates"]) == [50, 10000]
    assert ok_marker.stat().st_mtime_ns == before  # only the failed run ran again
    records = [json.loads(p.read_text()) for p in out.glob("runs/*/result.json")]
    assert all(r["ray_node"] == ray.get_runtime_context().get_node_id() for r in records)  # (one node here)
