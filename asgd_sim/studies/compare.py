"""Compare runs and sweep points: learning curves with a band over seeds, a table of outcomes and
figures, paired differences over shared seeds, and a winner only when the data say so.

    asgd-sim compare results/straggler                       # a sweep: one series per grid point
    asgd-sim compare results/straggler --baseline sync --target 0.9
    asgd-sim compare results/a results/b --metric train_loss --x updates --target train_loss<=0.1

Each series is one run folder, or one point of a sweep with all its seeds. Per series the table
counts the runs that reached the target, diverged or stalled, and averages each figure over the
runs where it means something: time to target over the runs that reached it, final loss and
accuracy over the runs that did not diverge (``±``: 95 % t-interval over seeds). Throughput is
the steady state (second half of each run: `results.summary.steady_rates`), in updates and in
gradients per simulated second.

The criterion is the time to ``--target`` (else the scenario's ``run.target_accuracy``); without
a target, or when no run reached it, the final value of ``--metric``; without learning curves, the
throughput. The leader is the series that meets it in the most runs, then with the best mean; it
is named the *winner* only when its paired difference to the runner-up over their shared seeds
has a 95 % interval that excludes zero (`statistics.paired_test`, conservative for runs that did
not reach the target or diverged); otherwise the two are *tied*. ``--baseline LABEL`` adds each
series' paired difference to that series on the criterion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScenarioError, closest
from .compare_plots import X_LABELS, band, draw_comparison
from .series import TUNED, Criterion, Outcome, Series, collect_series, criterion_for, final_value, outcomes, scores
from .statistics import Paired, Score, mean_ci, paired_difference, paired_test
from .targets import X_COLUMNS, Target, check_target, parse_target

__all__ = ["Series", "Comparison", "collect_series", "compare", "mean_ci", "band", "format_table", "pick_winner",
           "table_columns", "summarize", "add_baseline", "legend", "final_value", "METRICS", "XS", "X_LABELS"]

METRICS = ("test_accuracy", "train_loss", "staleness_mean", "throughput")  # the usual ones; any metrics column works
XS = X_COLUMNS
_FIGURES = (("updates_per_s", "updates_per_s"), ("gradients_per_s", "gradients_per_s"),
            ("steady_updates_per_s", "steady_updates_per_s"), ("steady_gradients_per_s", "steady_gradients_per_s"),
            ("staleness_mean", "staleness_mean"), ("staleness_p95", "staleness_p95"), ("lock_wait_mean", "lock_wait_mean"),
            ("lock_wait_row_mean", "lock_wait_row_mean"))


@dataclass
class Comparison:
    series: list[Series]
    rows: list[dict[str, Any]]  # the table: one dict per series
    winner: int | None
    reason: str
    metric: str
    x: str
    target: Target | None
    criterion: Criterion = field(default_factory=lambda: criterion_for("throughput", None, "sim_time", False))
    tied: list[int] = field(default_factory=list)  # the leaders, when none is shown better than the other
    verdict: str = ""  # the line under the table
    baseline: int | None = None
    logx: bool = False
    outcomes: list[list[Outcome]] = field(default_factory=list)  # per series, per successful run
    figure: Path | None = None
    table_file: Path | None = None


# ---------------------------------------------------------------------------------- the rows


def summarize(s: Series, runs: list[Outcome], mine: list[Score], criterion: Criterion, target: Target | None) -> dict[str, Any]:
    """The table row of one series (means and 95 % half-widths over its successful runs)."""
    summaries = s.summaries()
    row: dict[str, Any] = {"label": s.label, "runs": len(summaries), "failed": len(s.runs) - len(summaries), "tuned": s.tuned,
                           "diverged": sum(o.diverged for o in runs), "stalled": sum(o.stalled for o in runs)}
    if target is not None:
        reached = [o.reach for o in runs if o.reach.reached]
        row["reached"] = len(reached)
        row["to_target"], row["to_target_ci"] = mean_ci([r.value for r in reached])
        row["to_target_resolution"] = float(np.mean([r.resolution for r in reached])) if reached else math.nan
    alive = [sm for sm, o in zip(summaries, runs, strict=True) if not o.diverged]  # final values mean nothing after a blow-up
    for name in ("final_loss", "final_accuracy"):
        row[name], row[f"{name}_ci"] = mean_ci([sm.get(name) for sm in alive])
    for name, column in _FIGURES:
        row[name], row[f"{name}_ci"] = mean_ci([sm.get(column) for sm in summaries])
    exact = [(-sc.value if criterion.higher else sc.value) for sc in mine if not sc.censored]
    row["criterion"], row["criterion_ci"] = mean_ci(exact)
    row["criterion_runs"] = len(exact)
    return row


def _rank_key(row: dict[str, Any], criterion: Criterion) -> tuple[float, float]:
    value = row["criterion"] if math.isfinite(row["criterion"]) else math.inf
    return (-row["criterion_runs"], -value if criterion.higher and math.isfinite(value) else value)


def pick_winner(rows: list[dict[str, Any]], per_series: list[list[Score]], criterion: Criterion,
                unit: str = "") -> tuple[int | None, list[int], str]:
    """(winner, tied leaders, the verdict line): see the module docstring."""
    ranked = sorted((i for i, r in enumerate(rows) if r["runs"]), key=lambda i: _rank_key(rows[i], criterion))
    if not ranked or not rows[ranked[0]]["criterion_runs"]:
        return None, [], "no winner: no series has a run with a value to compare"
    if len(ranked) == 1:
        return None, [], f"no winner: {rows[ranked[0]]['label']} is the only series with runs"
    lead, second = ranked[0], ranked[1]
    test = paired_test(per_series[lead], per_series[second])
    names = f"{rows[lead]['label']} - {rows[second]['label']}"
    if test.excludes_zero and test.mean < 0:
        return lead, [], (f"winner: {rows[lead]['label']} ({criterion.reason}; paired over {test.n} shared seeds: "
                          f"{names} = {_signed(test, criterion.higher, unit)})")
    if test.mean == math.inf:
        why = f"{rows[lead]['label']} did not get there in a seed where {rows[second]['label']} did"
    elif test.n < 2:
        why = f"{test.n} shared seed{'' if test.n == 1 else 's'} with values: too few for a paired interval (run more --seeds)"
    else:
        why = f"paired over {test.n} shared seeds: {names} = {_signed(test, criterion.higher, unit)}, an interval that includes 0"
    return None, [lead, second], f"tied: {rows[lead]['label']} and {rows[second]['label']} lead ({criterion.reason}); {why}"


def _signed(test: Paired, higher: bool, unit: str) -> str:
    """A paired difference of scores in the criterion's own units (scores negate higher-is-better)."""
    mean = -test.mean if higher else test.mean
    return f"{mean:+.3g} ±{test.half:.2g}{(' ' + unit) if unit else ''}"


def add_baseline(rows: list[dict[str, Any]], per_series: list[list[Score]], criterion: Criterion, baseline: str) -> int:
    """Each row's paired difference to the series labelled ``baseline`` (its index is returned)."""
    labels = [r["label"] for r in rows]
    if baseline not in labels:
        hint = closest(baseline, labels)
        raise ScenarioError("--baseline", f"= {baseline!r}: no series has this label" + (f"; did you mean {hint!r}?" if hint else "")
                            + f" (the series: {', '.join(repr(label) for label in labels)})")
    base = labels.index(baseline)
    for i, row in enumerate(rows):
        diff = paired_difference(per_series[i], per_series[base])
        sign = -1.0 if criterion.higher else 1.0
        row["vs_baseline"], row["vs_baseline_ci"], row["vs_baseline_n"] = sign * diff.mean, diff.half, diff.n
    return base


# ---------------------------------------------------------------------------------- the table


def _fmt(value: float, ci: float = math.nan, scale: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value * scale:.3g}"
    return text + (f" ±{ci * scale:.2g}" if ci is not None and math.isfinite(ci) else "")


def _count(key: str) -> Any:
    return lambda r: f"{r[key]}/{r['runs']}"


def table_columns(rows: list[dict[str, Any]], target: Target | None, x: str, baseline: int | None = None,
                  criterion: Criterion | None = None) -> list[tuple[str, Any]]:
    """(header, row -> text) for the columns that have data."""
    cols: list[tuple[str, Any]] = [("series", lambda r: r["label"]),
                                   ("runs", lambda r: f"{r['runs']}" + (f" (+{r['failed']} failed)" if r["failed"] else ""))]
    if any(r.get("tuned") for r in rows):
        cols.append(("tuned", lambda r: r.get("tuned") or "-"))
    if target is not None:
        cols.append(("reached", _count("reached")))
    for key in ("diverged", "stalled"):
        if any(r.get(key) for r in rows):
            cols.append((key, _count(key)))
    if target is not None:
        head = f"{'time' if x == 'sim_time' else 'updates'} to {target.short}" + (" (s)" if x == "sim_time" else "")
        cols.append((head, lambda r: _fmt(r["to_target"], r["to_target_ci"]) + (
            f" (res. {r['to_target_resolution']:.3g})" if r["reached"] and r["to_target_resolution"] > 0 else "")))
    if baseline is not None and criterion is not None:
        cols.append((f"vs {rows[baseline]['label']}", lambda r, b=baseline: "baseline" if r is rows[b] else (
            _fmt(r["vs_baseline"], r["vs_baseline_ci"]) + (f" (n={r['vs_baseline_n']})" if math.isfinite(r["vs_baseline"]) else ""))))
    shown = [("final_loss", "final loss", 1.0), ("final_accuracy", "final acc", 1.0), ("steady_updates_per_s", "updates/s", 1.0)]
    if any(not math.isclose(r.get("steady_gradients_per_s", math.nan), r.get("steady_updates_per_s", math.nan)) for r in rows):
        shown.append(("steady_gradients_per_s", "gradients/s", 1.0))  # K-batch, sync, local SGD: not one gradient per update
    shown += [("staleness_mean", "staleness mean", 1.0), ("staleness_p95", "staleness p95", 1.0), ("lock_wait_mean", "lock wait (ms)", 1e3)]
    for key, head, scale in shown:
        if any(math.isfinite(r.get(key, math.nan)) for r in rows):
            cols.append((head, lambda r, k=key, s=scale: _fmt(r[k], r[f"{k}_ci"], s)))
    return cols


def legend(comparison: Comparison) -> list[str]:
    """What the table's figures are averaged over (printed under it)."""
    notes = ["± = 95 % t-interval over seeds; updates/s and gradients/s: steady state (second half of each run); "
             "lock wait: per push"]
    if comparison.target is not None:
        notes.append(f"time to {comparison.target.text}: over the runs that reached it; exact where a run stopped at this target, "
                     "else interpolated between evaluations (res. = the interval it fell in)")
    if any(math.isfinite(r.get("final_loss", math.nan)) for r in comparison.rows):
        diverged = sum(r.get("diverged", 0) for r in comparison.rows)
        notes.append("final loss and accuracy: over the runs that did not diverge"
                     + (f" ({diverged} diverged)" if diverged else " (none diverged, none stalled)" if not any(
                         r.get("stalled") for r in comparison.rows) else " (none diverged)"))
    if comparison.baseline is not None:
        notes.append(f"vs {comparison.rows[comparison.baseline]['label']}: paired difference in {comparison.criterion.label} "
                     "over the seeds where both have a value (n)")
    return notes


def format_table(comparison: Comparison) -> str:
    """The table as aligned text: the winner marked with *, tied leaders with =."""
    cols = table_columns(comparison.rows, comparison.target, comparison.x, comparison.baseline, comparison.criterion)
    cells = [[head for head, _ in cols]] + [[str(get(r)) for _, get in cols] for r in comparison.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = []
    for n, row in enumerate(cells):
        mark = "*" if n and comparison.winner == n - 1 else ("=" if n and n - 1 in comparison.tied else " ")
        lines.append(mark + " " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    lines += legend(comparison)
    if comparison.verdict:
        lines.append(comparison.verdict)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- compare


def compare(paths: list[str | Path], metric: str | None = None, x: str = "sim_time", target: str | float | Target | None = None,
            out: str | Path | None = None, name: str = "compare", baseline: str | None = None, logx: bool = False,
            tuned: str = "best") -> Comparison:
    """Compare folders; write ``<name>.png`` and ``<name>.csv`` into ``out`` (default: the first folder)."""
    if not paths:
        raise ScenarioError("compare", "give at least one run or sweep folder")
    if x not in XS:
        raise ScenarioError("--x", f"= {x!r}: must be one of {', '.join(XS)}")
    if tuned not in TUNED:
        raise ScenarioError("--tuned", f"= {tuned!r}: must be one of {', '.join(TUNED)}")
    wanted = parse_target(target)
    series = collect_series(list(paths), tuned)
    columns = [c for s in series for curve in s.curves for c in curve.columns]
    if metric is not None:
        check_target(Target(metric, ">=", 0.0), columns, "--metric")
    has_curves = any(np.isfinite(c["test_accuracy"].to_numpy(float)).any() for s in series for c in s.curves)
    metric = metric or ("test_accuracy" if has_curves else "throughput")
    if wanted is not None:
        check_target(wanted, columns)
        if not any(np.isfinite(c[wanted.metric].to_numpy(float)).any() for s in series for c in s.curves):
            raise ScenarioError("--target", f"= {wanted.text}: no run has a value of {wanted.metric} (timing-only runs have no "
                                "learning curves; a problem without that metric writes NaN)")
    elif has_curves:
        targets = {s.target for s in series if s.target is not None}
        wanted = Target("test_accuracy", ">=", max(targets)) if targets else None
    per_run = [outcomes(s, wanted, x) for s in series]
    criterion = criterion_for(metric, wanted, x, has_curves or wanted is not None)
    if criterion.key == "to_target" and not any(o.reach.reached for runs in per_run for o in runs):
        criterion = criterion_for(metric, None, x, has_curves)  # nobody got there: the final values decide
    per_series = scores(series, per_run, criterion)
    rows = [summarize(s, runs, mine, criterion, wanted) for s, runs, mine in zip(series, per_run, per_series, strict=True)]
    unit = {"to_target": "s" if x == "sim_time" else "updates", "throughput": "updates/s"}.get(criterion.key, "")
    winner, tied, verdict = pick_winner(rows, per_series, criterion, unit)
    base = add_baseline(rows, per_series, criterion, baseline) if baseline is not None else None
    comparison = Comparison(series, rows, winner, criterion.reason, metric, x, wanted, criterion, tied, verdict, base, logx, per_run)
    folder = Path(out) if out is not None else Path(paths[0])
    folder.mkdir(parents=True, exist_ok=True)
    comparison.figure = draw_comparison(comparison, folder / f"{name}.png")
    comparison.table_file = folder / f"{name}.csv"
    frame = pd.DataFrame(rows)
    frame.insert(0, "tied", [i in tied for i in range(len(rows))])
    frame.insert(0, "winner", [i == winner for i in range(len(rows))])
    frame.insert(len(frame.columns), "criterion_name", criterion.key)
    frame.to_csv(comparison.table_file, index=False)
    return comparison

