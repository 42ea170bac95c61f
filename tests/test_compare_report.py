"""``asgd-sim compare`` and ``asgd-sim report``: bands over seeds, the winner, a self-contained HTML page."""

from __future__ import annotations

import json
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
from asgd_sim.studies.compare import band, compare, format_table, mean_ci
from asgd_sim.studies.report import write_report

SCENARIOS = Path(__file__).parent.parent / "scenarios"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A small numerics sweep: 3 step sizes x 2 seeds of a small MLP, 60 updates each (the step of
    100 diverges).

    It takes ~18 s (spawned workers import JAX and compile), so the tests using it are marked slow.
    """
    out = tmp_path_factory.mktemp("cmp") / "sweep"
    code = main(["sweep", str(SCENARIOS / "quickstart.toml"), "--grid", "optimizer.learning_rate=0.01,0.2,100", "--seeds", "2",
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


def test_band_holds_runs_stopped_at_their_target() -> None:
    # Two runs; the first stopped at its target at x = 5 (accuracy 0.9). Held at its last value,
    # it still counts after it stopped: n stays 2, the mean is (0.9 + the other) / 2 and the band
    # does not jump to the slow run alone (nor widen to a one-run interval).
    xs = np.linspace(0, 10, 11)
    fast = pd.DataFrame({"sim_time": xs[:6], "update": xs[:6], "test_accuracy": np.linspace(0.5, 0.9, 6)})
    slow = pd.DataFrame({"sim_time": xs, "update": xs, "test_accuracy": np.linspace(0.1, 0.8, 11)})
    held = band([fast, slow], "sim_time", "test_accuracy", points=11, hold=[True, False])
    assert (held["n"] == 2).all()
    np.testing.assert_allclose(held["mean"][6:], (0.9 + slow["test_accuracy"][6:].to_numpy()) / 2)
    free = band([fast, slow], "sim_time", "test_accuracy", points=11)
    assert (free["n"][6:] == 1).all() and free["hi"][6:].isna().all()  # (without hold: one run left, no band)
    logged = band([fast, slow], "sim_time", "test_accuracy", points=11, log=True)
    np.testing.assert_allclose(logged["x"], np.geomspace(1.0, 10.0, 11))


# ---------------------------------------------------------------------------------- synthetic sweeps

_BASE_SUMMARY = {"updates_per_s": 10.0, "gradients_per_s": 10.0, "steady_updates_per_s": 10.0, "steady_gradients_per_s": 10.0,
                 "staleness": {"mean": 1.0, "p95": 2.0}, "lock_wait_mean": 0.0, "diverged": False, "stalled": False,
                 "stopped": "until_updates", "final_accuracy": 0.9}


def fake_sweep(root: Path, series: dict[str, list[dict]], target: float | None = None) -> Path:
    """A sweep folder laid out as asgd-sim sweep writes it, with given summaries and curves (one
    variant per series, seeds from each run's "seed")."""
    points = []
    for p, (label, runs) in enumerate(series.items()):
        pid = f"p{p:03d}"
        points.append({"id": pid, "label": label, "values": {"variant": label}, "set": []})
        for run in runs:
            name = f"{pid}-seed{run['seed']}"
            folder = root / "runs" / name
            folder.mkdir(parents=True)
            summary = {**_BASE_SUMMARY, **run.get("summary", {})}
            (folder / "summary.json").write_text(json.dumps(summary))
            curve = run.get("curve") or {"update": [0, 10, 20], "sim_time": [0.0, 1.0, 2.0], "train_loss": [2.3, 1.0, 0.5],
                                         "test_accuracy": [0.1, 0.5, 0.9], "staleness_mean": [0.0, 1.0, 1.0]}
            pd.DataFrame(curve).to_csv(folder / "metrics.csv", index=False)
            (folder / "scenario.toml").write_text(f"[run]\nseed = {run['seed']}\n" + (f"target_accuracy = {target}\n" if target else ""))
            (folder / "result.json").write_text(json.dumps({"run": name, "point": pid, "label": label, "values": {"variant": label},
                                                            "seed": run["seed"], "status": "ok", "summary": summary}))
    (root / "sweep.json").write_text(json.dumps({"name": "fake", "grid": [], "points": points, "seeds": 5,
                                                 "variants": [{"label": label, "set": []} for label in series]}))
    return root


def _t_interval(values) -> tuple[float, float]:
    from scipy import stats

    values = np.asarray(values, float)
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))


def test_diverged_and_stalled_runs_are_counted_not_averaged(tmp_path: Path, capsys) -> None:
    # The table said "final loss 2.31e+21 +- 7.3e+21": two diverged seeds averaged in.
    losses = [0.2, 2.3e21, 0.3, 9e20, 0.25]
    big = [{"seed": k, "summary": {"final_loss": loss, "diverged": loss > 1e6, "stopped": "diverged" if loss > 1e6 else "until_updates"}}
           for k, loss in enumerate(losses)]
    small = [{"seed": k, "summary": {"final_loss": 1.0 + 0.1 * k, "stalled": k == 4}} for k in range(5)]
    folder = fake_sweep(tmp_path / "sweep", {"step 1.0": big, "step 0.01": small})
    assert main(["compare", str(folder), "--metric", "train_loss"]) == 0
    out = capsys.readouterr().out
    header, first, second = out.splitlines()[:3]
    assert "diverged" in header and "stalled" in header
    assert "2/5" in first and "0/5" in second.split("step 0.01")[1].split()[1]  # diverged 2/5, 0/5
    table = pd.read_csv(folder / "compare.csv")
    assert list(table["diverged"]) == [2, 0] and list(table["stalled"]) == [0, 1]
    mean, half = _t_interval([0.2, 0.3, 0.25])  # over the runs that did not diverge
    assert table["final_loss"][0] == pytest.approx(mean) and table["final_loss_ci"][0] == pytest.approx(half)
    assert "over the runs that did not diverge (2 diverged)" in out


def _times(times: list[float], length: float = 600.0) -> list[dict]:
    """Runs that stopped at their target at these times (NaN: never reached it in ``length`` s)."""
    runs = []
    for k, t in enumerate(times):
        reached = math.isfinite(t)
        end = t if reached else length
        runs.append({"seed": k, "summary": {"time_to_target": t if reached else None, "updates_to_target": 10 * t if reached else None,
                                             "time_to_target_exact": reached, "stopped": "target_accuracy" if reached else "until_time"},
                     "curve": {"update": [0, 10 * end], "sim_time": [0.0, end], "train_loss": [2.3, 0.3],
                               "test_accuracy": [0.1, 0.95 if reached else 0.5], "staleness_mean": [0.0, 1.0]}})
    return runs


def test_shared_seeds_are_paired_and_a_winner_needs_an_interval_that_excludes_zero(tmp_path: Path, capsys) -> None:
    # Seeds differ a lot (the seed effect) and the two series move together: independent
    # intervals overlap widely, the paired difference is clearly below zero.
    seed_effect = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    a = seed_effect + np.array([1.0, 1.1, 0.9, 1.0, 1.05])
    b = seed_effect + np.array([1.5, 1.6, 1.45, 1.55, 1.5])
    folder = fake_sweep(tmp_path / "clear", {"a": _times(list(a)), "b": _times(list(b))}, target=0.9)
    comparison = compare([folder], baseline="b")
    mean, half = _t_interval(a - b)
    assert comparison.winner == 0 and not comparison.tied and half < abs(mean)
    assert f"{mean:+.3g} ±{half:.2g} s" in comparison.verdict and "paired over 5 shared seeds" in comparison.verdict
    (_, a_half), (_, b_half) = _t_interval(a), _t_interval(b)
    assert abs(a.mean() - b.mean()) < a_half + b_half  # (independent intervals overlap)
    row = comparison.rows[0]
    assert row["vs_baseline"] == pytest.approx(mean) and row["vs_baseline_ci"] == pytest.approx(half) and row["vs_baseline_n"] == 5
    assert comparison.rows[0]["to_target"] == pytest.approx(a.mean()) and comparison.rows[0]["to_target_resolution"] == 0.0

    # The same two series with differences of both signs: tied, whoever leads on the mean.
    c = a + np.array([0.3, -0.2, 0.1, -0.4, 0.25])
    folder = fake_sweep(tmp_path / "tie", {"a": _times(list(a)), "c": _times(list(c))}, target=0.9)
    assert main(["compare", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("= ") and lines[2].startswith("= ") and "winner" not in out
    mean, half = _t_interval(a - c)  # a leads: its mean is lower, by 0.01 s
    assert "tied: a and c lead (reaches the target first)" in out and f"{mean:+.3g} ±{half:.2g} s, an interval that includes 0" in out
    table = pd.read_csv(folder / "compare.csv")
    assert list(table["tied"]) == [True, True] and not table["winner"].any()


def test_runs_that_miss_the_target_count_conservatively(tmp_path: Path) -> None:
    nan = math.nan
    # "fast" reaches the target in every seed; "slow" in one seed, the others ran 600 s without:
    # their time to target is at least 600 s, so fast - slow <= (50 - 600) there: fast wins.
    fast, slow = _times([50.0, 52.0, 49.0, 51.0]), _times([500.0, nan, nan, nan])
    comparison = compare([fake_sweep(tmp_path / "a", {"fast": fast, "slow": slow}, target=0.9)])
    mean, half = _t_interval([50 - 500, 52 - 600, 49 - 600, 51 - 600])
    assert comparison.winner == 0 and f"{mean:+.3g} ±{half:.2g} s" in comparison.verdict
    assert [r["reached"] for r in comparison.rows] == [4, 1]
    # A leader that missed the target where the runner-up reached it is not shown better there.
    early, steady = _times([10.0, 11.0, 12.0, nan]), _times([40.0, 41.0, 42.0, 43.0])
    comparison = compare([fake_sweep(tmp_path / "b", {"early": early, "steady": steady}, target=0.9)])
    assert comparison.winner is None and comparison.tied == [1, 0]  # steady reached in more seeds: it leads
    assert "tied: steady and early lead" in comparison.verdict


def test_targets_on_any_metric_are_interpolated_with_their_resolution(tmp_path: Path, capsys) -> None:
    # grad_norm_sq is a column only these runs' metrics.csv has: targets are not limited to a list.
    curve = {"update": [0, 100, 200, 300], "sim_time": [0.0, 10.0, 20.0, 30.0], "train_loss": [2.3, 1.0, 0.4, 0.2],
             "test_accuracy": [0.1, 0.6, 0.8, 0.9], "staleness_mean": [0.0, 1.0, 1.0, 1.0], "grad_norm_sq": [5.0, 0.5, 0.05, 0.004]}
    folder = fake_sweep(tmp_path / "s", {"only": [{"seed": 0, "curve": curve}, {"seed": 1, "curve": curve}]})
    assert main(["compare", str(folder), "--target", "train_loss<=0.5", "--x", "updates"]) == 0
    out = capsys.readouterr().out
    # Between updates 100 (loss 1.0) and 200 (0.4): 100 + 100 * (0.5 - 1.0) / (0.4 - 1.0) = 183.3, resolution 100.
    assert "updates to train_loss<=0.5" in out and "183 ±0 (res. 100)" in out
    comparison = compare([folder], target="grad_norm_sq<=0.01")
    assert comparison.rows[0]["to_target"] == pytest.approx(20 + 10 * (0.01 - 0.05) / (0.004 - 0.05))
    assert comparison.rows[0]["to_target_resolution"] == 10.0
    assert compare([folder], target=0.7).rows[0]["to_target"] == pytest.approx(15.0)  # a bare number: test accuracy
    assert main(["compare", str(folder), "--target", "grad_norm<=0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --target = grad_norm<=0.01: unknown metric 'grad_norm'")
    assert "did you mean 'grad_norm_sq'" in err and "train_loss, test_accuracy, grad_norm_sq, suboptimality, staleness_mean, throughput" in err
    for bad in ("loss<0.1", "train_loss<=x", "1.5"):
        assert main(["compare", str(folder), "--target", bad]) == 2
        assert capsys.readouterr().err.startswith("error: --target")
    assert main(["compare", str(folder), "--baseline", "onyl"]) == 2 and "did you mean 'only'" in capsys.readouterr().err


def test_logx_draws_the_curves_on_a_log_axis(tmp_path: Path) -> None:
    from asgd_sim.results.plots import plt
    from asgd_sim.studies.compare_plots import plot_curves

    folder = fake_sweep(tmp_path / "s", {"a": [{"seed": 0}, {"seed": 1}], "b": [{"seed": 0}]})
    comparison = compare([folder], logx=True)
    assert comparison.logx and comparison.figure.is_file()
    for logx, scale in ((True, "log"), (False, "linear")):
        fig, ax = plt.subplots()
        plot_curves(comparison.series, "test_accuracy", "sim_time", ax, logx=logx)
        assert ax.get_xscale() == scale and len(ax.get_lines()) == 2
        plt.close(fig)


# ---------------------------------------------------------------------------------- compare


@pytest.mark.slow
def test_compare_a_sweep_bands_table_and_outcomes(sweep_dir: Path, capsys) -> None:
    assert main(["compare", str(sweep_dir), "--target", "0.5", "--logx"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for head in ("reached", "diverged", "time to acc>=0.5 (s)", "final acc", "updates/s", "lock wait (ms)"):
        assert head in lines[0], head
    # The step of 100 blows up in both seeds: counted, and left out of the final loss and accuracy.
    blown = next(line for line in lines if "learning_rate=100" in line)
    table = pd.read_csv(sweep_dir / "compare.csv")
    assert " 2/2 " in blown and table["diverged"][2] == 2 and math.isnan(table["final_loss"][2])  # (no run to average)
    assert out.count("\nwinner: ") + out.count("\ntied: ") == 1 and "over the runs that did not diverge (2 diverged)" in out
    assert (sweep_dir / "compare.png").stat().st_size > 10_000 and (sweep_dir / "compare.csv").is_file()
    comparison = compare([sweep_dir], x="updates")
    assert [s.label for s in comparison.series] == ["learning_rate=0.01", "learning_rate=0.2", "learning_rate=100"]
    assert all(len(s.curves) == 2 for s in comparison.series) and comparison.metric == "test_accuracy"
    assert [r["diverged"] for r in comparison.rows] == [0, 0, 2]
    runs = asgd_sim.load_sweep(sweep_dir)
    mean, _ = mean_ci(runs[runs["optimizer.learning_rate"] == 0.2]["final_accuracy"])
    assert comparison.rows[1]["final_accuracy"] == pytest.approx(mean)
    leader = comparison.winner if comparison.winner is not None else comparison.tied[0]
    assert comparison.rows[leader]["final_accuracy"] == max(r["final_accuracy"] for r in comparison.rows[:2])
    assert comparison.verdict in format_table(comparison)


@pytest.mark.slow
def test_compare_run_folders_and_errors(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    a, b = sweep_dir / "runs" / "p000-seed0", sweep_dir / "runs" / "p001-seed0"
    assert main(["compare", str(a), str(b), "--metric", "train_loss", "--x", "updates", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "p000-seed0" in out and "p001-seed0" in out and (tmp_path / "c" / "compare.png").is_file()
    # One run each (both seed 0): one pair, too few for an interval, so no winner is named.
    assert "tied: " in out and "(lowest final loss); 1 shared seed with values: too few for a paired interval" in out
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
