"""Faults in real runs: a worker that crashes, server checkpoints, and kill -9 then --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real_time  # real runs: their assertions read wall-clock times

from asgd_sim.scenario.files import scenario_from_dict
from asgd_sim.trace import APPLIED, CANCELLED, Trace

from helpers import ROOT, check_trace, forced_env, replay_max_diff


def test_a_crashing_worker_does_not_stop_training(tmp_path: Path) -> None:
    from asgd_sim.runner import run_scenario

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 150, "eval_every": 50},
        "workers": [{"name": "steady", "count": 3, "compute": 0.01},  # no restart policy: a crash is for good
                    {"name": "flaky", "count": 1, "compute": 0.01, "failures": {"at": [0.25], "restart_after": 0.1}}],
    }, name="faults")

    def inject(worker: int, k: int) -> None:
        if (worker, k) in ((1, 3), (3, 2)):
            raise RuntimeError(f"boom in worker {worker}")

    out = tmp_path / "run"
    result = run_scenario(sc, out, backend="devices", emulate=True, inject=inject)
    assert result.summary["stopped"] == "until_updates" and result.summary["updates"] == 150
    failures = Trace.load(out).meta["failures"]  # the trace records every failure
    assert sorted((f["worker"], f["error"].split(":")[0]) for f in failures) == [(1, "RuntimeError"), (3, "RuntimeError"), (3, "WorkerCrash")]
    trace = result.trace
    check_trace(trace)
    applied = trace.fate == APPLIED
    # Worker 1 stays down after its gradient k=3 crashed; the others carry on.
    assert trace.k[(trace.worker == 1) & applied].max() < 3
    assert not ((trace.worker == 1) & (trace.k > 3)).any()
    assert trace.fate[(trace.worker == 1) & (trace.k == 3)][0] == CANCELLED
    # Worker 3 is brought back by its restart policy, each time with a fresh pull.
    restarted = [f["restarted"] for f in failures if f["worker"] == 3]
    assert len(restarted) == 2 and all(r is not None for r in restarted)
    # (Both failures of worker 3 happen only if its first crash, at its gradient k = 2, about 3
    # cycles of ~12 ms in, ends its 0.1 s down time before the scheduled failure at 0.25 s: a margin
    # of ~100 ms for load. Measured: the first crash at 0.03-0.05 s, with both cores busy too.)
    first = min(f["t"] for f in failures if f["worker"] == 3)
    assert first + 0.1 < 0.25, f"worker 3 crashed first at t={first:.3f}s, too late to be up at 0.25s"
    for f in failures:
        if f["worker"] == 3:
            # Down for restart_after = 0.1 s: never less (a sleep does not end early; 1e-4 for clock
            # rounding), and longer only by a thread's wake-up and the server's bookkeeping, measured
            # < 2 ms with both cores busy: 50 ms of slack is ample on a loaded machine.
            assert f["t"] + 0.1 - 1e-4 <= f["restarted"] <= f["t"] + 0.1 + 0.05, f
    # After its last restart (~0.35 s) the run goes on for ~0.4 s of 12-16 ms cycles: ~30 of worker
    # 3's gradients are applied (measured 29-32, loaded or not; a slower machine slows all workers
    # alike, so the count does not fall with load). More than 5 shows it really came back.
    late = (trace.worker == 3) & applied & (trace.t_read > max(restarted))
    assert late.sum() > 5
    diff, _ = replay_max_diff(out)
    assert diff <= 1e-6


def test_a_checkpoint_is_a_consistent_cut(tmp_path: Path) -> None:
    """The checkpoint's trace replayed from scratch gives exactly the checkpoint's parameters."""
    from asgd_sim.runner import run_scenario
    from asgd_sim.backends.checkpoint import load_checkpoint

    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 130, "eval_every": 1000},
        "workers": [{"count": 3, "compute": 0.005}], "server": {"checkpoint_every": 40},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    }, name="ckpt")
    out = tmp_path / "run"
    result = run_scenario(sc, out, backend="devices", emulate=True)
    assert result.summary["backend"]["checkpoints"][-1] == 120
    ckpt = load_checkpoint(out)
    assert ckpt.updates == 120 and ckpt.versions == [120] and ckpt.trace.num_update_rows == 120
    assert len(list((out / "checkpoints").glob("0*"))) == 1  # older checkpoints are removed
    shutil.copy(out / "scenario.toml", ckpt.folder / "scenario.toml")
    np.save(ckpt.folder / "final_params.npy", np.concatenate(ckpt.rows)[: result.summary["param_count"]])
    diff, _ = replay_max_diff(ckpt.folder)
    assert diff <= 1e-6
    # Adam's state (step count, moments) is saved too: count = 120 updates.
    assert any(leaf.shape == () and int(leaf) == 120 for leaf in ckpt.state_leaves[0])


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_the_last_checkpoint(tmp_path: Path) -> None:
    scenario = tmp_path / "long.toml"
    scenario.write_text("""
[run]
until_updates = 600
eval_every = 100
[[workers]]
count = 4
compute = 0.01
[server]
checkpoint_every = 25
[model]
name = "logreg"
[optimizer]
name = "adam"
learning_rate = 0.01
""")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "asgd_sim.cli", "run", str(scenario), "--backend", "devices", "--emulate", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, env=forced_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "latest.json"  # written atomically (os.replace): never half a file
    # Wait for the observable condition (a checkpoint at >= 100 of the 600 updates), not for a time:
    # the remaining 500 updates take ~1.5 s of emulated time, so the kill lands mid-run however
    # slow the start (imports, compilation) was. 240 s: a generous bound for a loaded machine.
    deadline = time.monotonic() + 240
    reached = False
    while not reached and time.monotonic() < deadline and process.poll() is None:
        reached = pointer.is_file() and json.loads(pointer.read_text())["updates"] >= 100
        if not reached:
            time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    assert reached, "no checkpoint at >= 100 updates within 240 s"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    killed_at = json.loads(pointer.read_text())["updates"]

    done = subprocess.run([*command, "--resume"], env=forced_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "until_updates" and summary["updates"] == 600
    trace = Trace.load(out)
    assert trace.meta["resumed_from"]["updates"] >= killed_at >= 100
    check_trace(trace)  # versions 1..600 without a gap: the resumed server went on from the checkpoint
    # Gradients in flight when the process died were lost with it.
    cut = trace.meta["resumed_from"]["t"]
    assert ((trace.fate == CANCELLED) & (trace.t_read <= cut)).any()
    diff, _ = replay_max_diff(out)  # the whole run, killed and resumed, replays exactly
    assert diff <= 1e-6
