"""Tuned sweeps: which value of the tuned keys each point keeps (``asgd-sim sweep --tune``).

A sweep run with ``--tune KEY=V1,V2,...`` runs every point at every value (every seed each) and
keeps, per point, the best value by one stated criterion, from the runs' summaries:

1. time to target (the scenario's ``run.target_accuracy``): the values that reach it in the most
   seeds, then the lowest mean time to it over those seeds;
2. else (no target, or no value reaches it) the final train loss: the values that diverge in the
   fewest seeds, then the lowest mean final loss over the seeds that did not diverge;
3. else (timing-only runs) the highest steady-state updates/s.

Ties keep the value listed first. The choice is made on the same seeds the comparison then
reports, so it is optimistic by selection: rerun the chosen values with new seeds to confirm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["mark_chosen", "tuning_rows", "criterion_of", "figure_of", "tuning_lines", "RULES"]

RULES = {"time to target": "the values reaching the target in the most seeds, then the lowest mean time to it",
         "final loss": "the values diverging in the fewest seeds, then the lowest mean final loss of the others",
         "throughput": "the highest mean steady-state updates/s"}


def criterion_of(runs: pd.DataFrame) -> str:
    """The criterion the choice uses for these runs: "time to target", "final loss" or "throughput"."""
    ok = runs[runs["status"] == "ok"]
    if "time_to_target" in ok.columns and ok["time_to_target"].notna().any():
        return "time to target"
    diverged = "diverged" in ok.columns and any(_yes(v) for v in ok["diverged"])
    if "final_loss" in ok.columns and (ok["final_loss"].notna().any() or diverged):
        return "final loss"
    return "throughput"


def _yes(value: Any) -> bool:
    """A yes/no cell of the runs table (NaN where a run lacks the field: no)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(float) if name in frame.columns else np.full(len(frame), math.nan)


def _score(runs: pd.DataFrame, criterion: str) -> dict[str, Any]:
    """One tuned value's figures over its successful runs, and its rank key (lower is better)."""
    ok = runs[runs["status"] == "ok"]
    diverged = np.array([_yes(v) for v in ok["diverged"]] if "diverged" in ok.columns else [False] * len(ok), dtype=bool)
    out: dict[str, Any] = {"runs": len(ok), "diverged": int(diverged.sum())}
    times = _column(ok, "time_to_target")
    out["reached"] = int(np.isfinite(times).sum())
    out["time_to_target"] = float(np.nanmean(times)) if out["reached"] else math.nan
    losses = _column(ok, "final_loss")[~diverged]
    out["final_loss"] = float(np.nanmean(losses)) if np.isfinite(losses).any() else math.nan
    rates = _column(ok, "steady_updates_per_s")
    rates = np.where(np.isfinite(rates), rates, _column(ok, "updates_per_s"))
    out["updates_per_s"] = float(np.nanmean(rates)) if np.isfinite(rates).any() else math.nan
    if not len(ok):
        out["key"] = (math.inf, math.inf)
    elif criterion == "time to target":
        out["key"] = (-out["reached"], out["time_to_target"] if out["reached"] else math.inf)
    elif criterion == "final loss":
        out["key"] = (out["diverged"], out["final_loss"] if math.isfinite(out["final_loss"]) else math.inf)
    else:
        out["key"] = (0, -out["updates_per_s"] if math.isfinite(out["updates_per_s"]) else math.inf)
    return out


def tuning_rows(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per point and tuned value: its figures, the criterion and whether it is the point's choice."""
    if "tune_index" not in runs.columns or runs.empty:
        return []
    rows = []
    for point, mine in runs.groupby("point", sort=True):
        criterion = criterion_of(mine)
        scored = [(int(index), str(group["tune_label"].iloc[0]), _score(group, criterion))
                  for index, group in mine.groupby("tune_index", sort=True)]
        best = min(scored, key=lambda item: (item[2]["key"], item[0]))[0]
        for index, label, score in scored:
            rows.append({"point": point, "label": str(mine["label"].iloc[0]), "tune_index": index, "tune_label": label,
                         "criterion": criterion, "chosen": index == best, **{k: v for k, v in score.items() if k != "key"}})
    return rows


def mark_chosen(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``tune_chosen`` column: whether the run's tuned value is its point's choice."""
    chosen = {(r["point"], r["tune_index"]) for r in tuning_rows(runs) if r["chosen"]}
    return runs.assign(tune_chosen=[(p, int(i)) in chosen for p, i in zip(runs["point"], runs["tune_index"], strict=True)])


def figure_of(row: dict[str, Any]) -> str:
    """One tuned value's figure on its criterion, as text (``9.8 s (3/3)``, ``0.21``, ``140 updates/s``)."""
    if row["criterion"] == "time to target":
        return (f"{row['time_to_target']:.3g} s" if row["reached"] else "not reached") + f" ({row['reached']}/{row['runs']})"
    if row["criterion"] == "final loss":
        text = f"{row['final_loss']:.3g}" if math.isfinite(row["final_loss"]) else "-"
        return text + (f" ({row['diverged']}/{row['runs']} diverged)" if row["diverged"] else "")
    return f"{row['updates_per_s']:.4g} updates/s"


def tuning_lines(runs: pd.DataFrame) -> list[str]:
    """Per point, the chosen value and every value's figure (what ``asgd-sim sweep`` prints)."""
    rows = tuning_rows(runs)
    lines = []
    for point in dict.fromkeys(r["point"] for r in rows):
        mine = [r for r in rows if r["point"] == point]
        chosen = next(r for r in mine if r["chosen"])
        lines.append(f"{point} {chosen['label']}: {chosen['tune_label']} by {chosen['criterion']} ["
                     + " | ".join(f"{r['tune_label']}: {figure_of(r)}" + (" *" if r["chosen"] else "") for r in mine) + "]")
    return lines
