"""``asgd-sim compare`` and ``asgd-sim report``: bands over seeds, the winner, a self-contained HTML page."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import asgd_sim
from asgd_sim.cli import main
from asgd_sim.studies.compare import band, compare, format_table, mean_ci, pick_winner
from asgd_sim.studies.report import write_report

SCENARIOS = Path(__file__).parent.parent / "scenarios"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A small numerics sweep: 2 step sizes x 2 seeds of a small MLP, 60 updates each.

    It takes ~13 s (spawned workers import JAX and compile), so the tests using it are marked slow.
    """
    out = tmp_path_factory.mktemp("cmp") / "sweep"
    code = main(["sweep", str(SCENARIOS / "quickstart.toml"), "--grid", "optimizer.learning_rate=0.01,0.2", "--seeds", "2",
                 "--set", "run.until_updates=60", "--set", "run.eval_every=20", "--set", "model.hidden=[32]",
                 "--jobs", "2", "--out", str(out), "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def timing_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "timing"
    code = main(["sweep", str(SCENARIOS / "lock_contention.toml"), "--timing-only", "--grid", "server.lock=global,none",
                 "--set", "run.until_updates=200", "--set", "run.eval_every=50", "--set", "workers[0].count=4",
                 "--jobs", "1", "--out", str(out), "--quiet"])
    assert code == 0
    return out


# ---------------------------------------------------------------------------------- statistics


def test_mean_ci_and_band_are_t_intervals() -> None:
    mean, half = mean_ci([1.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(12.7062047 * math.sqrt(2) / math.sqrt(2))
    assert mean_ci([5.0]) == (5.0, pytest.approx(math.nan, nan_ok=True)) and math.isnan(mean_ci([None, math.nan])[0])
    xs = np.linspace(0, 10, 11)
    curves = [pd.DataFrame({"sim_time": xs, "update": xs, "test_accuracy": xs + d}) for d in (0.0, 2.0)]
    b = band(curves, "sim_time", "test_accuracy", points=11)
    assert np.allclose(b["mean"], xs + 1) and np.allclose(b["hi"] - b["mean"], 12.7062047) and (b["n"] == 2).all()
    # A curve that stops early (its run reached the target) leaves the band, not the mean's history.
    short = [curves[0], curves[1].iloc[:6]]
    b = band(short, "sim_time", "test_accuracy", points=11)
    assert (b["n"].to_numpy() == [2] * 6 + [1] * 5).all() and np.allclose(b["mean"][6:], xs[6:]) and b["hi"][6:].isna().all()


def test_winner_prefers_reaching_the_target_reliably_then_fast() -> None:
    nan = math.nan
    rows = [{"runs": 3, "reached": 2, "to_target": 1.0, "final_accuracy": 0.9, "updates_per_s": 9},
            {"runs": 3, "reached": 3, "to_target": 5.0, "final_accuracy": 0.8, "updates_per_s": 5},
            {"runs": 3, "reached": 3, "to_target": 4.0, "final_accuracy": 0.7, "updates_per_s": 1}]
    assert pick_winner(rows, "test_accuracy", True) == (2, "reaches the target first")
    for r in rows:
        r.update(reached=0, to_target=nan)
    assert pick_winner(rows, "test_accuracy", True) == (0, "highest final accuracy")
    assert pick_winner(rows, "test_accuracy", False) == (0, "highest throughput")


# ---------------------------------------------------------------------------------- compare


@pytest.mark.slow
def test_compare_a_sweep_bands_table_and_winner(sweep_dir: Path, capsys) -> None:
    assert main(["compare", str(sweep_dir), "--target", "0.5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "time to 0.5 acc (s)" in lines[0] and "final acc" in lines[0] and "updates/s" in lines[0] and "lock wait (ms)" in lines[0]
    marked = [line for line in lines[1:3] if line.startswith("*")]
    assert len(marked) == 1 and "winner: learning_rate=" in out
    assert (sweep_dir / "compare.png").stat().st_size > 10_000 and (sweep_dir / "compare.csv").is_file()
    comparison = compare([sweep_dir], x="updates")
    assert [s.label for s in comparison.series] == ["learning_rate=0.01", "learning_rate=0.2"]
    assert all(len(s.curves) == 2 for s in comparison.series) and comparison.metric == "test_accuracy"
    runs = asgd_sim.load_sweep(sweep_dir)
    mean, _ = mean_ci(runs[runs["optimizer.learning_rate"] == 0.2]["final_accuracy"])
    assert comparison.rows[1]["final_accuracy"] == pytest.approx(mean)
    assert comparison.rows[comparison.winner]["final_accuracy"] == max(r["final_accuracy"] for r in comparison.rows)
    assert "winner:" in format_table(comparison)


@pytest.mark.slow
def test_compare_run_folders_and_errors(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    a, b = sweep_dir / "runs" / "p000-seed0", sweep_dir / "runs" / "p001-seed0"
    assert main(["compare", str(a), str(b), "--metric", "train_loss", "--x", "updates", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "p000-seed0" in out and "p001-seed0" in out and (tmp_path / "c" / "compare.png").is_file()
    assert "lowest final loss" in out
    assert main(["compare", str(tmp_path)]) == 2
    assert "is neither a run folder" in capsys.readouterr().err


def test_compare_timing_only_uses_throughput(timing_dir: Path, capsys) -> None:
    assert main(["compare", str(timing_dir)]) == 0
    out = capsys.readouterr().out
    assert "highest throughput" in out and "final acc" not in out and "time to" not in out
    frame = asgd_sim.load_run(timing_dir / "runs" / "p000-seed0")
    assert list(frame["update"]) == [0, 50, 100, 150, 200] and frame["test_accuracy"].isna().all()
    assert frame["throughput"].iloc[1:].gt(0).all()


# ---------------------------------------------------------------------------------- report


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)


def _assert_self_contained(html: str) -> None:
    assert not re.search(r'(src|href)="(?!data:)', html), "no external resources"
    assert "<link" not in html and "<script" not in html and "@import" not in html


@pytest.mark.slow
def test_report_of_a_run(sweep_dir: Path) -> None:
    run = sweep_dir / "runs" / "p001-seed1"
    html_path, md_path = write_report(run)
    html = html_path.read_text()
    _assert_self_contained(html)
    assert len(_images(html)) == 7  # 4 convergence, staleness, timeline, throughput
    for section in ("Key numbers", "Convergence", "Staleness", "Worker timeline", "Throughput", "Worker groups", "Scenario"):
        assert f"<h2>{section}" in html
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 7 and all((run / link).is_file() for link in links)


@pytest.mark.slow
def test_report_of_a_sweep(sweep_dir: Path, timing_dir: Path, capsys) -> None:
    assert main(["report", str(sweep_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (sweep_dir / "report.html").read_text()
    _assert_self_contained(html)
    assert len(_images(html)) >= 5
    for section in ("What was swept", "Key numbers", "Convergence", "Effect of the swept value", "Staleness histograms",
                    "Worker timeline", "Throughput over time"):
        assert f"<h2>{section}" in html, section
    md = (sweep_dir / "report.md").read_text()
    assert all((sweep_dir / link).is_file() for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    assert "| series |" in md and "learning_rate=0.2" in md
    html_path, _ = write_report(timing_dir)
    assert "Throughput per point" in html_path.read_text() and len(_images(html_path.read_text())) >= 3


@pytest.mark.slow
def test_report_renders_in_headless_chromium(sweep_dir: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    html_path, _ = write_report(sweep_dir)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
                    html_path.resolve().as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 20_000
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2000, 1200)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 500, "the page shows plots (many colours), not just text"
    ink = (image < 235).any(axis=2).mean()
    assert ink > 0.05, "the page is not blank"
    # The plots' blue (#4c72b0 bars, C0 lines) is on the page: the embedded images were drawn.
    blue = (np.abs(image.astype(int) - [31, 119, 180]).sum(axis=2) < 40) | (np.abs(image.astype(int) - [76, 114, 176]).sum(axis=2) < 40)
    assert blue.sum() > 500
