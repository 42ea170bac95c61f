"""End to end: asynchronous SGD really learns, and its run folder holds what DESIGN.md promises.

One run (module fixture) of an MLP (default hidden [256, 256]) on the 8x8 digits with 8
asynchronous exponential workers on the ideal cluster; the tests read its result and run folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asgd_sim.validation import theory
from asgd_sim.results.folder import write_run
from asgd_sim.results.result import Result
from asgd_sim.runner import simulate
from asgd_sim.trace import APPLIED

from helpers import EXP1, ideal_scenario

M = 8
UPDATES = 1500
EVAL_EVERY = 100


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    # The ideal cluster (tests/helpers.py), SGD at learning rate 0.05, the default MLP on digits.
    sc = ideal_scenario("learning", {"model": {"name": "mlp"}, "data": {"name": "digits"}},
                        run={"until_updates": UPDATES, "eval_every": EVAL_EVERY, "seed": 0}, workers=[{"count": M, "compute": EXP1}],
                        optimizer={"name": "sgd", "learning_rate": 0.05})
    result = simulate(sc)
    out = tmp_path_factory.mktemp("learning") / "run"
    write_run(result, out)
    return result, out


def test_async_mlp_learns_digits(run: tuple[Result, Path]) -> None:
    result, _ = run
    accuracy, loss = result.metrics["test_accuracy"], result.metrics["train_loss"]
    assert result.summary["updates"] == UPDATES and not result.summary["diverged"]
    assert accuracy[0] < 0.3  # 10 classes: chance at the start
    assert result.summary["final_accuracy"] >= 0.9
    assert np.all(accuracy[result.metrics["update"] >= 1000] >= 0.9)  # and stays there
    assert loss[-1] < 0.25 * loss[0]
    assert result.summary["staleness"]["mean"] > M / 2  # it was asynchronous


def test_run_folder_has_metrics_and_plots(run: tuple[Result, Path]) -> None:
    result, out = run
    for name in ("scenario.toml", "gradients.parquet", "updates.parquet", "summary.json", "timeline.json", "metrics.csv",
                 "loss_vs_time.png", "loss_vs_updates.png", "accuracy_vs_time.png", "accuracy_vs_updates.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["update", "sim_time", "train_loss", "test_accuracy", "grad_norm_sq", "suboptimality", "staleness_mean"]
    assert [int(row["update"]) for row in rows] == list(range(0, UPDATES + 1, EVAL_EVERY))
    for key in ("sim_time", "train_loss", "test_accuracy", "grad_norm_sq", "staleness_mean"):
        np.testing.assert_allclose([float(row[key]) for row in rows], result.metrics[key], rtol=1e-8, err_msg=key)
    assert all(row["suboptimality"] == "nan" for row in rows)  # an MLP's optimum is unknown
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == pytest.approx(result.summary["final_accuracy"])
    assert summary["updates"] == UPDATES


def test_staleness_in_metrics_grows_to_m_minus_1(run: tuple[Result, Path]) -> None:
    result, _ = run
    staleness: Any = result.metrics["staleness_mean"]
    expected = theory.async_staleness_mean(M)  # M - 1 (THEORY.md C2, Little's law)
    assert staleness[0] == 0.0 and staleness[1] < staleness[-1]
    # The running mean approaches M-1 from below: the start-up (everyone reads version 0) and
    # the gradients in flight at the end are all it misses, O(M^2/N) in all.
    assert expected * (1 - 0.02) < staleness[-1] <= expected
    # It is the mean over the trace's applied gradients.
    trace = result.trace
    assert staleness[-1] == pytest.approx(trace.staleness[trace.fate == APPLIED].mean(), rel=1e-12)
