"""``asgd-sim sweep``: the grid, runs.parquet, resuming after kill -9, refusing a changed sweep, failed runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import asgd_sim
from asgd_sim.cli import main
from asgd_sim.errors import ScenarioError
from asgd_sim.studies.sweep import parse_grid, parse_tune, parse_variant, plan_sweep, split_top_level

TINY = """
# A tiny timing scenario: 3 workers, 150 updates.
[run]
until_updates = 150
eval_every = 50

[[workers]]
count = 3
compute = { dist = "exponential", mean = 0.05 }

[server]
shards = 2

[model]
param_bytes = 1e5
"""

FAILING_MODEL = '''
import jax.numpy as jnp
import numpy as np


def make_model(fail=False):
    if fail:
        raise RuntimeError("this model refuses to be built (fail = true)")

    def init(key):
        return {"w": jnp.zeros(3)}

    def loss(params, batch):
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    return init, loss


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    return {"x": x[:150], "y": y[:150]}, {"x": x[150:], "y": y[150:]}
'''


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _results(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first, then the parent pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (Linux /proc)."""
    parents = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    children = {child: int(fields[1]) for child, fields in parents.items() if fields is not None}
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in children.items():
            if ppid == parent and _alive(child):
                found.append(child)
                todo.append(child)
    return found


# ---------------------------------------------------------------------------------- parsing


def test_grid_and_variant_parsing() -> None:
    assert split_top_level('1,[2,3],{a=1,b="x,y"}', ",") == ["1", "[2,3]", '{a=1,b="x,y"}']
    assert parse_grid("network.latency={dist=\"constant\", value=0.001},0.002") == (
        "network.latency", ['{dist="constant", value=0.001}', "0.002"])
    assert parse_variant("backup:algorithm.kind=sync;algorithm.backup=1") == ("backup", ["algorithm.kind=sync", "algorithm.backup=1"])
    assert parse_variant("base:") == ("base", [])
    for bad in ("server.lock", "=1,2", "server.lock=a,,b", "server.lock=a,a"):
        with pytest.raises(ScenarioError):
            parse_grid(bad)
    with pytest.raises(ScenarioError, match="not key=value"):
        parse_variant("x:algorithm.kind")


def test_plan_is_the_cartesian_product_with_variants_first(tiny: Path) -> None:
    sweep = plan_sweep(tiny, ["server.lock=global,none", "workers[0].count=2,4,8"], ["a:", "b:server.shards=4"], seeds=2)
    assert len(sweep.points) == 2 * 2 * 3 and len(sweep.run_names()) == 24
    first, last = sweep.points[0], sweep.points[-1]
    assert first.values == {"variant": "a", "server.lock": "global", "workers[0].count": 2}
    assert last.values == {"variant": "b", "server.lock": "none", "workers[0].count": 8}
    assert last.label == "b, lock=none, count=8" and last.scenario["server"]["shards"] == 4
    assert plan_sweep(tiny, ["server.lock=global,none"]).digest != plan_sweep(tiny, ["server.lock=global,shard"]).digest
    assert plan_sweep(tiny, seeds=1).digest == plan_sweep(tiny, seeds=5).digest  # more seeds: the same sweep


def test_tuned_values_as_lists_and_log_ranges() -> None:
    assert parse_tune("optimizer.learning_rate=0.01,0.1") == ("optimizer.learning_rate", ["0.01", "0.1"])
    # Seven values a half-decade apart from 1e-3 to 1, rounded to 3 significant digits.
    assert parse_tune("optimizer.learning_rate=log:0.001:1:7") == (
        "optimizer.learning_rate", ["0.001", "0.00316", "0.01", "0.0316", "0.1", "0.316", "1"])
    assert parse_tune("algorithm.k=log:1:16:5")[1] == ["1", "2", "4", "8", "16"]
    for bad in ("x=log:1:0.1:3", "x=log:0:1:3", "x=log:a:b:3", "x=log:0.001:1:1", "x=log:0.001:1", "x=log:1:1.001:9"):
        with pytest.raises(ScenarioError, match="--tune"):
            parse_tune(bad)


def test_a_key_from_both_a_variant_and_the_grid_is_refused(tiny: Path, tmp_path: Path, capsys) -> None:
    # Before, the grid silently won. Now neither does: one line, exit 2, nothing written.
    out = tmp_path / "both"
    for args, first in ((["--grid", "server.lock=global,none", "--variant", "a:server.lock=shard"],
                         "error: --grid: 'server.lock' is also set by --variant a (server.lock)"),
                        (["--grid", "workers=2,4", "--variant", "b:workers[0].count=3"],
                         "error: --grid: 'workers' is also set by --variant b (workers[0].count)"),
                        (["--grid", "server.apply_time=0.001,0.002", "--tune", "server.apply_time=0.003,0.004"],
                         "error: --tune: 'server.apply_time' is also set by --grid server.apply_time"),
                        (["--variant", "c:server.shards=4", "--tune", "server.shards=1,2"],
                         "error: --tune: 'server.shards' is also set by --variant c (server.shards)")):
        assert main(["sweep", str(tiny), "--timing-only", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(first), err
    assert not out.exists()


@pytest.mark.slow
def test_tuned_sweep_keeps_each_points_best_value(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tuned"
    args = ["sweep", str(tiny), "--timing-only", "--variant", "global:server.lock=global", "--variant", "none:server.lock=none",
            "--tune", "server.apply_time=0.002,0.03", "--seeds", "2", "--jobs", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs["run"]) == [f"p00{p}-t{t}-seed{k}" for p in (0, 1) for t in (0, 1) for k in (0, 1)]
    assert {"server.apply_time", "tune_index", "tune_label", "tune_chosen"} <= set(runs.columns)
    # Timing only: the highest mean steady-state updates/s wins, per point (computed here from the rows).
    for point, mine in runs.groupby("point"):
        means = mine.groupby("server.apply_time")["steady_updates_per_s"].mean()
        best = means.idxmax()
        assert (mine["tune_chosen"] == (mine["server.apply_time"] == best)).all(), point
        label = mine["label"].iloc[0]
        assert f"{point} {label}: apply_time={best:g} by throughput" in printed
    assert "ran        8 runs" in printed and "tuned      server.apply_time per point (the highest mean steady-state updates/s" in printed
    # The choice reaches the run folders' summaries: the run with the chosen value really ran with it.
    chosen = runs[runs["tune_chosen"]].iloc[0]
    assert f"value = {chosen['server.apply_time']}" in (out / "runs" / chosen["run"] / "scenario.toml").read_text().split("[server.apply_time]")[1]
    # compare: each point at its chosen value (a column says which); --tuned all: every value.
    assert main(["compare", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["series", "runs", "tuned"] and "apply_time=" in table
    assert len(asgd_sim.studies.compare.compare([out], tuned="all").series) == 4
    assert main(["report", str(out)]) == 0 and "## Tuning" in (out / "report.md").read_text()
    # Resuming runs nothing; another tuned list is another sweep.
    assert main(args) == 0 and "ran        0 runs (8 were already done)" in capsys.readouterr().out
    assert main([*args[:8], "server.apply_time=0.002,0.01", *args[9:]]) == 2
    assert "the grid changed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- running


def test_timing_sweep_writes_one_row_per_run_and_resumes(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny), "--timing-only", "--grid", "server.lock=global,none", "--grid", "workers=2,4",
            "--seeds", "2", "--jobs", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr()  # --quiet: no header or progress, yet the summary (before, nothing at all)
    assert "ran        8 runs (0 were already done)" in printed.out and "results    " in printed.out and "sweep      " not in printed.err
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 8 and runs["run"].is_unique and (runs["status"] == "ok").all()
    assert list(runs.columns[:7]) == ["run", "point", "label", "server.lock", "workers", "seed", "status"]
    assert sorted(runs["seed"].unique()) == [0, 1] and set(runs["server.lock"]) == {"global", "none"}
    assert (runs["updates"] == 150).all() and {"updates_per_s", "staleness_mean", "staleness_p95", "lock_wait_mean", "per_worker"} <= set(runs.columns)
    # Each row is its run folder's summary; the seed and the swept values reached the run.
    row = runs[(runs["server.lock"] == "none") & (runs["workers"] == 4) & (runs["seed"] == 1)].iloc[0]
    summary = json.loads((out / "runs" / row["run"] / "summary.json").read_text())
    assert summary["updates_per_s"] == pytest.approx(row["updates_per_s"]) and summary["workers"] == 4
    resolved = (out / "runs" / row["run"] / "scenario.toml").read_text()
    assert 'lock = "none"' in resolved and "seed = 1" in resolved
    assert runs[runs["server.lock"] == "none"]["lock_wait_mean"].max() == 0.0
    # Common random numbers: the two seeds differ, the same seed at two points shares the compute draws.
    assert runs.groupby("point")["sim_time"].nunique().eq(2).all()
    # Checked on the traces. Compute times come from a per-worker stream spawned by (seed, kind,
    # worker id) (asgd_sim.timing.workers.stream), and the k-th draw of worker w is its k-th
    # gradient's compute time. Neither swept key touches that: server.lock only changes how
    # updates wait for each other on the server, and `workers` only adds or removes other workers'
    # streams. So worker 0's first compute durations depend on the seed alone. (They are recovered
    # as t_compute_end - t_compute_start, times of a few simulated seconds: rounding is ~1e-15.)
    def compute_times(lock: str, workers: int, seed: int, first: int = 20) -> pd.DataFrame:
        name = runs[(runs["server.lock"] == lock) & (runs["workers"] == workers) & (runs["seed"] == seed)]["run"].item()
        grads = asgd_sim.load_run(out / "runs" / name, table="gradients")
        mine = grads[(grads["worker"] == 0) & (grads["k"] < first)].sort_values("k")
        assert list(mine["k"]) == list(range(first))
        return mine

    for seed in (0, 1):
        base = compute_times("global", 4, seed)
        durations = (base["t_compute_end"] - base["t_compute_start"]).to_numpy()
        for lock, workers in (("none", 4), ("global", 2), ("none", 2)):
            other = compute_times(lock, workers, seed)
            # The points really are different runs (the times at which the gradients land differ) ...
            assert not np.allclose(other["t_applied"].to_numpy(), base["t_applied"].to_numpy()), (lock, workers, seed)
            # ... yet the compute draws are the same.
            np.testing.assert_allclose((other["t_compute_end"] - other["t_compute_start"]).to_numpy(), durations,
                                       rtol=0, atol=1e-12, err_msg=f"{lock}, {workers} workers, seed {seed}")
    seed0 = compute_times("global", 4, 0)
    seed1 = compute_times("global", 4, 1)
    # Different seeds at the same point draw different compute times (continuous draws: no ties).
    assert np.all((seed0["t_compute_end"] - seed0["t_compute_start"]).to_numpy()
                  != (seed1["t_compute_end"] - seed1["t_compute_start"]).to_numpy())

    before = _results(out)
    capsys.readouterr()
    assert main(args[:-1]) == 0  # the same command again: nothing to run
    assert "ran        0 runs (8 were already done)" in capsys.readouterr().out
    assert _results(out) == before
    # More seeds is the same sweep, extended: only the new seed runs.
    assert main([*args[:8], "3", *args[9:]]) == 0
    after = _results(out)
    assert len(after) == 12 and all(after[k] == v for k, v in before.items())
    assert json.loads((out / "sweep.json").read_text())["seeds"] == 3

    frame = asgd_sim.load_sweep(out)
    assert len(frame) == 12 and frame.attrs["sweep"]["grid"][0]["key"] == "server.lock"
    curves = asgd_sim.load_sweep(out, table="metrics")  # timing-only: derived from the trace
    assert set(curves["run"]) == set(frame["run"]) and curves["staleness_mean"].notna().all()
    assert curves.groupby("run")["update"].max().eq(150).all()


@pytest.mark.slow
def test_numerics_sweep_has_learning_columns(tmp_path: Path) -> None:
    out = tmp_path / "numerics"
    scenario = Path(__file__).parent.parent / "scenarios" / "quickstart.toml"
    code = main(["sweep", str(scenario), "--grid", "optimizer.learning_rate=0.02,0.1", "--set", "run.until_updates=40",
                 "--set", "run.eval_every=20", "--set", "model.hidden=[16]", "--jobs", "1", "--out", str(out), "--quiet"])
    assert code == 0
    runs = asgd_sim.load_sweep(out)
    assert len(runs) == 2 and runs["final_loss"].notna().all() and runs["final_accuracy"].between(0, 1).all()
    assert list(runs["optimizer.learning_rate"]) == [0.02, 0.1]
    curves = asgd_sim.load_sweep(out, table="metrics")
    assert list(curves.groupby("run")["update"].apply(list).iloc[0]) == [0, 20, 40]
    run = asgd_sim.load_run(out / "runs" / runs["run"][0])
    assert run.attrs["summary"]["final_loss"] == pytest.approx(runs["final_loss"][0]) and run["test_accuracy"].notna().all()


@pytest.mark.slow
def test_kill_9_then_rerun_runs_only_what_is_missing(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cli = [sys.executable, "-m", "asgd_sim.cli", "sweep", str(tiny), "--timing-only", "--grid", "server.lock=global,shard,none",
           "--grid", "run.until_updates=150,300", "--seeds", "2", "--jobs", "2", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Wait for an observable condition (two runs committed), with a generous bound for a loaded machine.
    deadline = time.monotonic() + 120
    while len(_results(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    assert len(_results(out)) >= 2, "no two runs committed within 120 s"
    workers = _descendants(proc.pid)  # the spawned worker processes (and multiprocessing's helpers)
    assert workers, "the sweep runs its points in worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The orphaned workers notice (they poll their parent every 0.2 s) and exit. Wait for that, not
    # for a fixed time: a worker still running could commit a run, or leave a half-written one,
    # after the snapshot below or while the rerun works. 60 s: generous for a loaded machine.
    deadline = time.monotonic() + 60
    while (alive := [pid for pid in workers if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"orphaned sweep workers still running 60 s after kill -9: {alive}"
    done = _results(out)
    assert 2 <= len(done) < 12, "the sweep should be killed mid-way"
    rerun = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = _results(out)
    assert len(after) == 12
    assert all(after[name] == stamp for name, stamp in done.items())  # committed runs were not redone
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 12 and runs["run"].is_unique and (runs["status"] == "ok").all()
    assert not list((out / "runs").glob(".*")), "half-written runs are cleaned up"


def test_changed_scenario_or_grid_is_refused(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    base = ["sweep", str(tiny), "--timing-only", "--grid", "server.lock=global,none", "--out", str(out), "--quiet", "--jobs", "1"]
    assert main(base) == 0
    tiny.write_text(TINY.replace("count = 3", "count = 5"))
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a different sweep" in err
    assert "the scenario changed (workers[0].count: 3 -> 5)" in err and "another --out folder" in err
    tiny.write_text(TINY)
    assert main([*base[:4], "server.lock=global,shard", *base[5:]]) == 2
    assert "the grid changed (was --grid server.lock=global,none; now --grid server.lock=global,shard)" in capsys.readouterr().err
    assert main([*base[:2], *base[3:]]) == 2  # without --timing-only
    assert "it ran with --timing-only" in capsys.readouterr().err
    assert main(base) == 0  # the original command still resumes


def test_bad_grid_fails_before_any_run(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    assert main(["sweep", str(tiny), "--timing-only", "--grid", "server.lok=global,none", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: server.lok: unknown key") and "did you mean 'server.lock'" in err
    assert main(["sweep", str(tiny), "--timing-only", "--grid", "server.lock=global,bogus", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "server.lock = 'bogus'" in err and "(from --grid/--variant server.lock=bogus)" in err and "point p001" in err
    assert main(["sweep", str(tiny), "--grid", "run.seed=1,2", "--out", str(out)]) == 2
    assert "--seeds N" in capsys.readouterr().err
    assert not out.exists(), "nothing ran, nothing was written"


@pytest.mark.slow
def test_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "failmodel.py").write_text(FAILING_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    scenario = tmp_path / "user.toml"
    scenario.write_text('[run]\nuntil_updates = 20\neval_every = 10\n\n[[workers]]\ncount = 2\n\n'
                        '[model]\nname = "failmodel:make_model"\n\n[data]\nfactory = "failmodel:make_data"\nbatch_size = 8\n')
    out = tmp_path / "sweep"
    args = ["sweep", str(scenario), "--grid", "model.options.fail=false,true", "--out", str(out), "--jobs", "1", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "RuntimeError: this model refuses to be built" in err
    runs = asgd_sim.load_sweep(out)
    assert list(runs["status"]) == ["ok", "error"] and list(runs["model.options.fail"]) == [False, True]
    assert runs["error"][1].startswith("RuntimeError: this model refuses") and runs["final_loss"].notna()[0]
    failed = json.loads((out / "runs" / "p001-seed0" / "result.json").read_text())
    assert failed["status"] == "error" and "make_model" in failed["traceback"]
    before = _results(out)
    assert main(args) == 1 and _results(out) == before  # a recorded failure is not missing: nothing reruns
    assert main([*args, "--retry-failed"]) == 1
    after = _results(out)
    assert after["p000-seed0"] == before["p000-seed0"] and after["p001-seed0"] != before["p001-seed0"]


def test_out_must_be_a_new_or_sweep_folder(tiny: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", str(tiny), "--timing-only", "--out", str(run), "--quiet"]) == 0
    assert main(["sweep", str(tiny), "--timing-only", "--grid", "workers=2,3", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not a sweep folder: it holds a run folder (summary.json)" in err and f"{run}-sweep" in err
    assert not (run / "runs").exists() and not (run / "sweep.json").exists()


def test_a_second_sweep_into_a_busy_folder_is_refused(tiny: Path, tmp_path: Path, capsys) -> None:
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with (out / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("12345")
        held.flush()
        assert main(["sweep", str(tiny), "--timing-only", "--out", str(out)]) == 2
    assert "another asgd-sim sweep is writing to this folder (pid 12345)" in capsys.readouterr().err
