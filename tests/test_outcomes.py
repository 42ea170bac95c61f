"""Outcomes of a run and of a series of runs: stalled, reached, diverged; targets on any metric;
paired statistics over shared seeds. Each expectation is computed by hand or by an independent
formula (scipy's t quantile, a loop over seeds)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest

from asgd_sim.results.summary import learning_summary, stalled
from asgd_sim.results.tuning import mark_chosen, tuning_rows
from asgd_sim.runner import simulate

from helpers import EXP1, MLP32, ideal_scenario

scenario = functools.partial(ideal_scenario, "outcomes-test")


def curve(update, loss, acc=None) -> dict[str, np.ndarray]:
    update = np.asarray(update, float)
    return {"update": update, "sim_time": update / 10, "train_loss": np.asarray(loss, float),
            "test_accuracy": np.asarray(acc if acc is not None else [math.nan] * len(update), float),
            "staleness_mean": np.zeros(len(update))}


# ---------------------------------------------------------------------------------- stalled


def test_stalled_means_no_progress_over_the_last_half_of_the_run() -> None:
    u = [0, 100, 200, 300, 400]
    # Stuck at chance: loss within 10 % of its start, accuracy within 0.05 of chance.
    assert stalled(curve(u, [2.30, 2.29, 2.31, 2.28, 2.30], [0.10, 0.11, 0.09, 0.12, 0.10]))
    # Learned: the loss fell below 0.9 x its start in the last half.
    assert not stalled(curve(u, [2.30, 2.0, 1.5, 1.0, 0.5], [0.10, 0.3, 0.5, 0.7, 0.9]))
    # Learned early, then back at chance for the whole last half (updates 200..400): stalled.
    assert stalled(curve(u, [2.30, 0.5, 2.29, 2.30, 2.31], [0.10, 0.9, 0.11, 0.10, 0.10]))
    # The accuracy alone counts as progress (a loss that hardly moves while accuracy rises).
    assert not stalled(curve(u, [2.30, 2.30, 2.25, 2.22, 2.21], [0.10, 0.12, 0.14, 0.16, 0.20]))
    # No accuracy (a regression problem): the loss decides.
    assert stalled(curve(u, [10.0, 9.8, 9.7, 9.6, 9.5])) and not stalled(curve(u, [10.0, 9.0, 8.0, 7.0, 6.0]))
    # Nothing to measure from: no evaluation at update 0, a single row, or a start at zero loss.
    assert not stalled(curve([100, 200], [2.3, 2.3])) and not stalled(curve([0], [2.3])) and not stalled(curve(u, [0.0] * 5))


def test_learning_summary_stalled_excludes_diverged_and_reached() -> None:
    stuck = curve([0, 100, 200], [2.3, 2.3, 2.3], [0.1, 0.1, 0.1])
    assert learning_summary(stuck, None)["stalled"] is True
    assert learning_summary(stuck, None, diverged=True)["stalled"] is False
    assert learning_summary(stuck, 0.05)["stalled"] is False  # it met its (low) target
    assert learning_summary(stuck, 0.05)["time_to_target"] == 0.0 and not learning_summary(stuck, 0.05)["time_to_target_exact"]


def test_a_run_whose_step_is_too_small_stalls_and_a_good_one_does_not() -> None:
    base = scenario(MLP32, run={"until_updates": 200, "eval_every": 50, "seed": 3}, workers=[{"count": 4, "compute": EXP1}])
    assert simulate(base, ["optimizer.learning_rate=1e-7"]).summary["stalled"] is True
    good = simulate(base, ["optimizer.learning_rate=0.1"]).summary
    assert good["stalled"] is False and good["final_accuracy"] > 0.5


# ---------------------------------------------------------------------------------- tuning


def _tuned(point: str, index: int, seed: int, **summary) -> dict:
    return {"point": point, "label": point, "tune_index": index, "tune_label": f"lr={index}", "seed": seed, "status": "ok", **summary}


def test_a_tuned_point_keeps_the_value_reaching_the_target_most_often_then_fastest() -> None:
    nan = math.nan
    runs = pd.DataFrame([
        # p0 (a target): value 0 is faster but reaches it in 1 seed of 2; value 1 in both; value 2 in both, slower.
        _tuned("p0", 0, 0, time_to_target=10.0, final_loss=0.1, diverged=False),
        _tuned("p0", 0, 1, time_to_target=nan, final_loss=0.9, diverged=False),
        _tuned("p0", 1, 0, time_to_target=20.0, final_loss=0.2, diverged=False),
        _tuned("p0", 1, 1, time_to_target=30.0, final_loss=0.2, diverged=False),
        _tuned("p0", 2, 0, time_to_target=24.0, final_loss=0.2, diverged=False),
        _tuned("p0", 2, 1, time_to_target=28.0, final_loss=0.2, diverged=False),
        # p1 (no run reaches a target): the final loss; value 0 has the lowest loss but diverged once.
        _tuned("p1", 0, 0, time_to_target=nan, final_loss=0.1, diverged=False),
        _tuned("p1", 0, 1, time_to_target=nan, final_loss=nan, diverged=True),
        _tuned("p1", 1, 0, time_to_target=nan, final_loss=0.5, diverged=False),
        _tuned("p1", 1, 1, time_to_target=nan, final_loss=0.7, diverged=False),
        # p2: equal figures: the value listed first.
        _tuned("p2", 0, 0, time_to_target=nan, final_loss=0.3, diverged=False),
        _tuned("p2", 1, 0, time_to_target=nan, final_loss=0.3, diverged=False),
    ])
    rows = {(r["point"], r["tune_index"]): r for r in tuning_rows(runs)}
    assert [k for k, r in rows.items() if r["chosen"]] == [("p0", 1), ("p1", 1), ("p2", 0)]
    assert rows[("p0", 1)]["criterion"] == "time to target" and rows[("p0", 1)]["time_to_target"] == 25.0
    assert rows[("p0", 0)]["reached"] == 1 and rows[("p1", 0)]["diverged"] == 1 and rows[("p1", 1)]["final_loss"] == pytest.approx(0.6)
    assert rows[("p1", 1)]["criterion"] == "final loss"
    marked = mark_chosen(runs)
    assert list(marked["tune_chosen"]) == [False, False, True, True, False, False] + [False, False, True, True] + [True, False]
