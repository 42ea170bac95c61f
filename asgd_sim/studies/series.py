"""The series a comparison is made of, and what each of their runs did.

A series is one run folder, or one point of a sweep with all its seeds (at its tuned value, for a
sweep run with ``--tune``: `results.tuning`). Each successful run has an `Outcome`: whether and
when it reached the target, whether it diverged or stalled, how long it ran; and a `Score` on the
comparison's criterion (`Criterion`), exact or censored (`studies.statistics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScenarioError
from ..results.load import flatten_summary, is_run_dir, is_sweep_dir, load_run, load_sweep
from .statistics import Score
from .targets import X_COLUMNS, Reach, Target, reach

__all__ = ["Series", "Outcome", "Criterion", "collect_series", "outcomes", "scores", "criterion_for", "final_value", "flag", "TUNED"]

TUNED = ("best", "all")  # compare a tuned sweep at each point's chosen value, or every value as its own series


@dataclass
class Series:
    """One line of the comparison: a run folder, or a sweep point with its seeds."""

    label: str
    runs: pd.DataFrame  # one row per run: flattened summary fields, "path", "status", "seed"
    curves: list[pd.DataFrame] = field(default_factory=list)  # metrics frames of the successful runs, in `ok` order
    target: float | None = None  # the scenario's run.target_accuracy, if any
    tuned: str = ""  # the chosen value of a tuned sweep's point ("learning_rate=0.1"), else ""

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"]

    def summaries(self) -> list[dict[str, Any]]:
        """The flattened summaries of the successful runs (in `ok` order)."""
        return self.ok.to_dict("records")


@dataclass(frozen=True)
class Outcome:
    """What one successful run did, on the comparison's x axis."""

    seed: int
    reach: Reach  # when it met the target (value None: never, or no target)
    diverged: bool
    stalled: bool
    length: float  # how far it ran: its last evaluation's x
    initial: dict[str, float]  # the metrics at its first evaluation (update 0)


@dataclass(frozen=True)
class Criterion:
    """What decides the winner: a per-run figure and whether higher is better."""

    key: str  # "to_target", "final_loss", "final_accuracy", "staleness_mean", "throughput", or "final:<metric>"
    higher: bool
    reason: str  # "reaches the target first", "lowest final loss", ...
    label: str  # axis label of the bar chart


def criterion_for(metric: str, target: Target | None, x: str, has_curves: bool) -> Criterion:
    """The criterion of a comparison of ``metric`` curves (with a ``target``: time to it)."""
    unit = "time" if x == "sim_time" else "updates"
    if target is not None and has_curves:
        return Criterion("to_target", False, "reaches the target first",
                         f"{unit} to {target.short}" + (" (s)" if x == "sim_time" else ""))
    known = {"test_accuracy": Criterion("final_accuracy", True, "highest final accuracy", "final test accuracy"),
             "train_loss": Criterion("final_loss", False, "lowest final loss", "final train loss"),
             "staleness_mean": Criterion("staleness_mean", False, "lowest mean staleness", "mean staleness"),
             "throughput": Criterion("throughput", True, "highest throughput", "updates / simulated s (steady)")}
    if not has_curves:
        return known["throughput"]
    return known.get(metric) or Criterion(f"final:{metric}", False, f"lowest final {metric}", f"final {metric}")


# ---------------------------------------------------------------------------------- inputs


def collect_series(paths: list[str | Path], tuned: str = "best") -> list[Series]:
    """Series from run folders and sweep folders (a sweep gives one series per grid point; with
    ``tuned = "all"`` a tuned sweep gives one per point and tuned value)."""
    if tuned not in TUNED:
        raise ScenarioError("--tuned", f"= {tuned!r}: must be one of {', '.join(TUNED)}")
    series: list[Series] = []
    many = len(paths) > 1
    for raw in paths:
        folder = Path(raw)
        if is_sweep_dir(folder):
            runs = load_sweep(folder)
            if runs.empty:
                raise ScenarioError(str(folder), "is a sweep with no finished runs yet; run asgd-sim sweep first")
            runs = runs.assign(path=[str(folder / "runs" / r) for r in runs["run"]])
            for label, group, chosen in _sweep_groups(runs, tuned):
                s = Series(f"{folder.name}: {label}" if many else label, group.reset_index(drop=True), tuned=chosen)
                _add_curves(s)
                series.append(s)
        elif is_run_dir(folder):
            frame = load_run(folder)
            seed = int(frame.attrs.get("scenario", {}).get("run", {}).get("seed", 0))
            row = {**flatten_summary(frame.attrs["summary"]), "path": str(folder), "status": "ok", "seed": seed}
            series.append(Series(folder.name, pd.DataFrame([row]), [frame], _target_of(frame)))
        else:
            raise ScenarioError(str(folder), "is neither a run folder (summary.json) nor a sweep folder (sweep.json); "
                                "give folders written by asgd-sim run or asgd-sim sweep")
    return series


def _sweep_groups(runs: pd.DataFrame, tuned: str) -> list[tuple[str, pd.DataFrame, str]]:
    """(label, runs, chosen tuned value) per series of a sweep."""
    if "tune_label" not in runs.columns:
        return [(str(group["label"].iloc[0]), group, "") for _, group in runs.groupby("point", sort=True)]
    out = []
    for _, group in runs.groupby("point", sort=True):
        label = str(group["label"].iloc[0])
        if tuned == "all":
            for value, candidate in group.groupby("tune_label", sort=False):
                out.append((f"{label}, {value}" if label != "base" else str(value), candidate, ""))
        else:
            chosen = group[group["tune_chosen"].astype(bool)]
            out.append((label, chosen if len(chosen) else group, str(chosen["tune_label"].iloc[0]) if len(chosen) else ""))
    return out


def _target_of(frame: pd.DataFrame) -> float | None:
    value = frame.attrs.get("scenario", {}).get("run", {}).get("target_accuracy")
    return float(value) if value is not None else None


def _add_curves(s: Series) -> None:
    for path in s.ok["path"]:
        frame = load_run(path)
        s.curves.append(frame)
        s.target = s.target if s.target is not None else _target_of(frame)


# ---------------------------------------------------------------------------------- per run


def outcomes(s: Series, target: Target | None, x: str) -> list[Outcome]:
    """Per successful run: reached (when), diverged, stalled, length and first evaluation."""
    out = []
    for summary, curve in zip(s.summaries(), s.curves, strict=True):
        column = X_COLUMNS[x]
        xs = curve[column].to_numpy(float)
        found = reach(curve, target, x, summary, s.target) if target is not None else Reach(None)
        first = curve.iloc[0].to_dict() if len(curve) else {}
        out.append(Outcome(seed=int(summary.get("seed", 0)), reach=found, diverged=flag(summary.get("diverged")),
                           stalled=flag(summary.get("stalled")), length=float(np.nanmax(xs)) if xs.size else 0.0,
                           initial={k: float(v) for k, v in first.items() if isinstance(v, (int, float, np.number))}))
    return out


def flag(value: Any) -> bool:
    """A yes/no summary field (a runs-table cell may be NaN where an older run lacks it: no)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def final_value(summary: dict[str, Any], curve: pd.DataFrame, key: str) -> float:
    """A run's final figure for a criterion key (NaN when it has none)."""
    if key == "throughput":
        value = summary.get("steady_updates_per_s", summary.get("updates_per_s"))
    elif key.startswith("final:"):
        metric = key.split(":", 1)[1]
        column = curve[metric].to_numpy(float) if metric in curve.columns else np.zeros(0)
        value = column[-1] if column.size else math.nan
    else:
        value = summary.get(key)
    return float(value) if value is not None else math.nan


def scores(series: list[Series], per_run: list[list[Outcome]], criterion: Criterion) -> list[list[Score]]:
    """Each series' per-run scores (lower is better) on ``criterion``: exact, or censored at a
    lower bound (see `studies.statistics`); bounds use the longest run and the largest final
    value among all the series compared."""
    longest = max((o.length for runs in per_run for o in runs), default=0.0)
    finals = [[final_value(sm, c, criterion.key) for sm, c in zip(s.summaries(), s.curves, strict=True)] for s in series]
    worst = max((v for vs in finals for v in vs if math.isfinite(v)), default=0.0)
    out = []
    for runs, values in zip(per_run, finals, strict=True):
        mine = []
        for o, value in zip(runs, values, strict=True):
            if criterion.key == "to_target":
                if o.reach.reached:
                    mine.append(Score(o.seed, float(o.reach.value)))
                else:  # at least its own length; a diverged run never gets there: at least the longest
                    mine.append(Score(o.seed, max(o.length, longest) if o.diverged else o.length, censored=True))
            elif criterion.higher:
                # (a diverged run's accuracy is still a measurement; a missing one is at most 1)
                mine.append(Score(o.seed, -value) if math.isfinite(value) else Score(o.seed, -1.0, censored=True))
            elif (o.diverged or not math.isfinite(value)) and criterion.key != "staleness_mean":
                # a diverged run's final loss is infinite: at least anything seen, and its own start
                start = o.initial.get("train_loss" if criterion.key == "final_loss" else criterion.key[6:], math.nan)
                mine.append(Score(o.seed, max(worst, start) if math.isfinite(start) else worst, censored=True))
            else:
                mine.append(Score(o.seed, value))
        out.append(mine)
    return out
