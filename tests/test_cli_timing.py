"""``asgd-sim run FILE --timing-only``: the results folder, and user errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from asgd_sim.cli import main
from asgd_sim.scenario.files import load_scenario
from asgd_sim.trace import APPLIED, Trace

SCENARIO = """
name = "tiny"

[run]
until_updates = 200

[[workers]]
count = 3
compute = { dist = "exponential", mean = 0.05 }

[model]
param_bytes = 1e5  # timing only: the message size
"""


@pytest.fixture
def scenario_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    return path


def test_run_timing_only_writes_results_folder(scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["run", str(scenario_file), "--timing-only", "--out", str(out), "--quiet", "--set", "run.until_updates=321"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # --quiet, and no progress bar off a terminal
    for name in ("scenario.toml", "gradients.parquet", "updates.parquet", "timeline.json", "summary.json"):
        assert (out / name).is_file(), name
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p).stat().st_size > 0 for p in pngs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["updates"] == 321 and summary["stopped"] == "until_updates"
    assert summary["workers"] == 3 and summary["algorithm"] == "async"
    # The resolved scenario has every default filled in, the override applied, and loads back.
    resolved = tomllib.loads((out / "scenario.toml").read_text())
    assert resolved["run"]["until_updates"] == 321 and resolved["server"]["lock"] == "shard"
    assert load_scenario(out / "scenario.toml").run.until_updates == 321
    # The trace files are the run's trace: they agree with the summary.
    trace = Trace.load(out)
    assert int((trace.fate == APPLIED).sum()) == summary["gradients"]
    assert int(trace.u_version.max()) == 321
    timeline = json.loads((out / "timeline.json").read_text())
    assert any(e["ph"] == "X" for e in timeline["traceEvents"])


def test_run_prints_summary_without_quiet(scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "loud"
    assert main(["run", str(scenario_file), "--timing-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "200 updates" in printed and str(out) in printed


@pytest.mark.parametrize("override, mentions", [
    ("server.lock=globall", "server.lock"),
    ("server.lokc=global", "server.lokc"),
    ("run.until_updates=-3", "run.until_updates"),
    ("no_equals_sign", "="),
])
def test_bad_override_exits_2_with_one_line(scenario_file, tmp_path, capsys, override, mentions) -> None:
    out = tmp_path / "never"
    code = main(["run", str(scenario_file), "--timing-only", "--out", str(out), "--quiet", "--set", override])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and mentions in lines[0]
    assert "Traceback" not in err
    assert not out.exists()  # nothing is written for a scenario that does not validate


def test_missing_scenario_file_exits_2(tmp_path, capsys) -> None:
    code = main(["run", str(tmp_path / "nope.toml"), "--timing-only", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    # `python -m asgd_sim` is the entry point where the console script is not installed (the GPU
    # check runs the repository from PYTHONPATH); it must be the same CLI, exit codes included.
    quickstart = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.toml"
    done = subprocess.run([sys.executable, "-m", "asgd_sim", "run", str(quickstart), "--timing-only",
                           "--set", "run.until_updates=50", "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["updates"] == 50
    bad = subprocess.run([sys.executable, "-m", "asgd_sim", "run", "no-such.toml"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no-such.toml" in bad.stderr


def test_replay_says_what_it_replays_and_never_overwrites_without_force(scenario_file, tmp_path, capsys) -> None:
    run, out = tmp_path / "run", tmp_path / "replayed"
    numerics = ["--set", "model.name=logreg", "--set", "optimizer.learning_rate=0.1", "--set", "run.until_updates=60",
                "--set", "run.eval_every=30"]
    assert main(["run", str(scenario_file), *numerics, "--out", str(run), "--quiet"]) == 0
    assert main(["replay", str(run), "--set", "optimizer.learning_rate=0.02", "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"replay     {run}: its saved schedule (60 updates) with optimizer.learning_rate: 0.1 -> 0.02"
    replay = json.loads((out / "summary.json").read_text())["replay"]
    assert replay == {"of": str(run), "updates": 60, "changed": ["optimizer.learning_rate: 0.1 -> 0.02"]}
    # The same --out again: refused (one line, exit 2) and left as it was.
    before = (out / "summary.json").read_text()
    assert main(["replay", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out = {out}: already exists; a replay never overwrites a folder: give another --out, or add --force to replace that run folder"
    assert (out / "summary.json").read_text() == before
    # --force replaces it; nothing changed this time, and it says so.
    assert main(["replay", str(run), "--out", str(out), "--force"]) == 0
    assert "with nothing changed (the run's own numbers again)" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["replay"]["changed"] == []
    # Never into the run being replayed, nor over a folder that is not a run folder.
    assert main(["replay", str(run), "--out", str(run), "--force"]) == 2 and "is the run being replayed" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert main(["replay", str(run), "--out", str(tmp_path / "notes"), "--force"]) == 2
    assert "is not a run folder" in capsys.readouterr().err and (tmp_path / "notes" / "todo.txt").is_file()
