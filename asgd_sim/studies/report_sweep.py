"""The report of a sweep: what was swept, the comparison with outcomes and the winner (or the tied
leaders), the tuning of each point, convergence, the effect of the swept value, staleness
histograms, the leader's timeline, throughput and any failed runs (see `report`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScenarioError
from ..results.load import load_sweep
from .compare import compare, legend, table_columns
from .compare_plots import leader_marks
from .report_render import FIGURES, Section
from .statistics import mean_ci

__all__ = ["sweep_sections", "tuning_section"]


def sweep_sections(folder: Path, target: str | float | None = None, baseline: str | None = None) -> tuple[str, list[Section]]:
    """The title and sections of a sweep's report (see the module docstring)."""
    runs = load_sweep(folder)
    desc = runs.attrs["sweep"]
    if runs.empty:
        raise ScenarioError(str(folder), "is a sweep with no finished runs yet; run asgd-sim sweep first")
    figdir = folder / FIGURES
    figdir.mkdir(exist_ok=True)
    ok = int((runs["status"] == "ok").sum())
    tuned = f" x {len(desc['candidates'])} tuned values" if desc.get("candidates") else ""
    title = f"Sweep of {desc.get('name')}: {len(desc.get('points', []))} points{tuned} x {desc.get('seeds')} seeds"
    setup = [["scenario", str(desc.get("scenario"))], ["mode", "timing only" if desc.get("timing_only") else "timing + numerics"],
             ["runs", f"{len(runs)} ({ok} ok, {len(runs) - ok} failed)"]]
    setup += [["--variant", f"{v['label']}: {'; '.join(v['set']) or '(base)'}"] for v in desc.get("variants", [])]
    setup += [["--grid", f"{g['key']} = {', '.join(g['values'])}"] for g in desc.get("grid", [])]
    setup += [["--tune", f"{g['key']} = {', '.join(g['values'])}"] for g in desc.get("tune", [])]
    setup += [["--set", s] for s in desc.get("set", [])]
    question = _header_comment(Path(desc.get("scenario_file") or desc.get("scenario", "")))
    sections = [Section("The question", text=["From the header of the scenario file:"], code=question, fold=False)] if question else []
    sections.append(Section("What was swept", tables=[(["", ""], setup)]))

    comparison = compare([folder], out=figdir, name="compare", target=target, baseline=baseline)
    cols = table_columns(comparison.rows, comparison.target, comparison.x, comparison.baseline, comparison.criterion)
    marks = leader_marks(comparison)
    table_rows = [[(marks.get(i, "").strip() + " " if i in marks else "") + str(get(r)) if j == 0 else str(get(r))
                   for j, (_, get) in enumerate(cols)] for i, r in enumerate(comparison.rows)]
    sections.append(Section("Key numbers", text=[*legend(comparison), comparison.verdict.replace("winner:", "Winner (*):")
                                                 .replace("tied:", "Tied (=):")], tables=[([h for h, _ in cols], table_rows)]))
    tuning = tuning_section(runs, desc)
    if tuning is not None:
        sections.append(tuning)
    conv = Section("Convergence" if comparison.metric != "throughput" else "Throughput per point")
    if comparison.metric != "throughput":
        conv.text.append("Mean over seeds with its 95 % band; right: the winning criterion per point.")
        conv.figures.append((comparison.figure, f"{comparison.metric} vs simulated time"))
        loss = compare([folder], metric="train_loss", out=figdir, name="loss", target=target)
        conv.figures.append((loss.figure, "train loss vs simulated time"))
    else:
        conv.text.append("A timing-only sweep: no learning curves. Throughput over time per point, and updates/s per point.")
        conv.figures.append((comparison.figure, "throughput per point"))
    sections.append(conv)
    chosen = runs[runs["tune_chosen"].astype(bool)] if "tune_chosen" in runs.columns else runs  # (tuned: each point at its choice)
    effect = _plot_effect(chosen, desc, comparison, figdir / "effect.png")
    if effect:
        sections.append(Section("Effect of the swept value", figures=[(effect, "the winning criterion against the first numeric grid key")]))
    hist = _plot_histograms(chosen, figdir / "staleness.png")
    if hist:
        sections.append(Section("Staleness histograms", text=["Staleness of applied gradients, all seeds of a point together."],
                                figures=[(hist, "staleness per point")]))
    leader = comparison.winner if comparison.winner is not None else (comparison.tied[0] if comparison.tied else None)
    if leader is not None:
        best = comparison.series[leader].ok
        timeline = Path(best["path"].iloc[0]) / "timeline.png"
        name = comparison.rows[leader]["label"]
        if timeline.is_file():
            sections.append(Section("Worker timeline", text=[f"The {'winner' if leader == comparison.winner else 'leader'} ({name}), "
                                                             f"seed {int(best['seed'].iloc[0])}: compute (blue), "
                                                             "communication (grey), lock wait (orange), apply (green), lost work (red)."],
                                    figures=[(timeline, f"worker timeline of {best['run'].iloc[0]}")]))
    if comparison.metric != "throughput":
        through = compare([folder], metric="throughput", out=figdir, name="throughput", target=target)
        sections.append(Section("Throughput over time", text=["Server updates per simulated second between evaluations."],
                                figures=[(through.figure, "throughput per point")]))
    failed = runs[runs["status"] != "ok"]
    if len(failed):
        rows = [[r["run"], r["label"], str(r["error"])] for r in failed.to_dict("records")]
        sections.append(Section("Failed runs", text=["Each run's result.json has the error and its traceback; fix the cause, then "
                                                     "rerun the sweep command with --retry-failed."], tables=[(["run", "point", "error"], rows)]))
    text = desc.get("base_scenario", "")
    sections.append(Section("Base scenario (resolved)", text=[f"Folder: {folder}"], code=text))
    return title, sections


def _header_comment(path: Path) -> str:
    """The leading comment of a scenario file (its question and what to look at), if the file is still there."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line[1:].removeprefix(" "))
    return "\n".join(header)


def _numeric_axes(desc: dict[str, Any], runs: Any) -> list[str]:
    out = []
    for axis in desc.get("grid", []):
        column = runs[axis["key"]] if axis["key"] in runs.columns else None
        if column is not None and column.dropna().map(lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)).all():
            out.append(axis["key"])
    return out


def _plot_effect(runs: Any, desc: dict[str, Any], comparison: Any, path: Path) -> Path | None:
    """The winning criterion against the first numeric axis, one line per setting of the others."""
    from ..results.plots import plt

    axes = _numeric_axes(desc, runs)
    if not axes:
        return None
    xkey = axes[0]
    others = [c for c in (["variant"] if desc.get("variants") else []) + [g["key"] for g in desc.get("grid", [])] if c != xkey]
    ok = runs[runs["status"] == "ok"].copy()
    if comparison.criterion.key == "to_target" and comparison.target is not None:
        ycol, ylabel = "_to_target", comparison.criterion.label
        per_run = {run: o.reach.value for s, runs_of in zip(comparison.series, comparison.outcomes, strict=True)
                   for run, o in zip(s.ok["run"], runs_of, strict=True)}
        ok[ycol] = [per_run.get(r) for r in ok["run"]]
    elif comparison.metric == "test_accuracy":
        ycol, ylabel = "final_accuracy", "final test accuracy"
    else:
        ycol, ylabel = "updates_per_s", "updates / simulated s"
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = ok.groupby(others, sort=False, dropna=False) if others else [((), ok)]
    for i, (name, group) in enumerate(groups):
        xs = sorted(group[xkey].dropna().unique())
        stats = [mean_ci(group[group[xkey] == v][ycol]) for v in xs]
        means = np.array([m for m, _ in stats], dtype=float)
        half = np.array([h for _, h in stats], dtype=float)
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" if k != "variant" else str(v) for k, v in zip(others, name if isinstance(name, tuple) else (name,)))
        ax.errorbar(xs, means, yerr=np.where(np.isfinite(half), half, 0), marker="o", capsize=3, label=label or None, color=f"C{i % 10}")
    if all(v > 0 for v in ok[xkey].dropna()) and ok[xkey].max() / max(ok[xkey].min(), 1e-300) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel(xkey)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{ylabel} vs {xkey} (mean, 95 % interval)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_histograms(runs: Any, path: Path) -> Path | None:
    """Small multiples: the staleness histogram of each point (its seeds pooled)."""
    from ..results.plots import plt

    ok = runs[runs["status"] == "ok"]
    if "staleness_hist_counts" not in ok.columns or ok.empty:
        return None
    points = list(dict.fromkeys(ok["point"]))[:24]
    cols = min(4, len(points))
    rows = math.ceil(len(points) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False)
    for ax, point in zip(axes.flat, points):
        mine = ok[ok["point"] == point]
        total: dict[int, float] = {}
        for edges, counts in zip(mine["staleness_hist_edges"], mine["staleness_hist_counts"]):
            for left, count in zip(json.loads(edges)[:-1], json.loads(counts)):
                total[left] = total.get(left, 0) + count
        if total:
            lefts = np.array(sorted(total))
            heights = np.array([total[k] for k in lefts], dtype=float)
            heights /= heights.sum() or 1
            ax.bar(lefts, heights, width=np.diff(np.append(lefts, lefts[-1] + 1)) * 0.9, align="edge", color="#4c72b0")
            mean = float(np.average(lefts, weights=heights)) if heights.sum() else 0.0
            ax.axvline(mean, color="#dd8452", lw=1.2)
        ax.set_title(str(mine["label"].iloc[0]), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(points):]:
        ax.axis("off")
    fig.supxlabel("staleness (updates); orange: mean", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def tuning_section(runs: Any, desc: dict[str, Any]) -> Section | None:
    """A sweep run with --tune: per point, every tuned value's figure, the chosen one marked."""
    from ..results.tuning import RULES, figure_of, tuning_rows

    rows = tuning_rows(runs)
    if not rows:
        return None
    keys = ", ".join(t["key"] for t in desc.get("tune", []))
    criteria = sorted({r["criterion"] for r in rows})
    text = [f"Every point ran at every value of {keys}; each point keeps the best value (*) by {' or '.join(criteria)}: "
            + "; ".join(f"{c}: {RULES[c]}" for c in criteria) + ". The table, the curves and the winner above use the chosen "
            "values; every run is in runs.parquet (tune_label, tune_chosen), and asgd-sim compare --tuned all shows each value "
            "as a series. The choice is made on the seeds it is reported on: optimistic by selection; confirm it with new seeds."]
    table = [[r["label"], r["tune_label"] + (" *" if r["chosen"] else ""), figure_of(r)] for r in rows]
    return Section("Tuning", text=text, tables=[(["point", "value", "figure (criterion)"], table)])
