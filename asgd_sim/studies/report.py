"""``asgd-sim report DIR``: one self-contained HTML page and a Markdown twin for a run or a sweep.

``report.html`` embeds every figure as a base64 PNG and carries its own CSS: it opens offline,
can be mailed or attached to an issue, and needs no server. ``report.md`` has the same text and
tables and links the PNG files (so it renders on GitHub next to the results).

A run's report: the key numbers, convergence plots, the staleness histogram, the worker timeline
(Gantt of compute, communication and lock wait), throughput over time, per-group statistics and
the resolved scenario. A sweep's report: what was swept, the comparison table with the winner,
convergence with 95 % bands per point, the winning criterion against the swept value, staleness
histograms per point, the winner's worker timeline, throughput over time, and any failed runs.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScenarioError
from ..results.load import is_run_dir, is_sweep_dir, load_run, load_sweep

__all__ = ["write_report", "Section"]

FIGURES = "report_figures"  # generated PNGs live here, beside report.html


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)  # (header, rows)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)
    code: str | None = None  # preformatted text
    fold: bool = True  # HTML: show the code folded (click to open)


def write_report(path: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into the run or sweep folder ``path``."""
    folder = Path(path)
    if is_sweep_dir(folder):
        title, sections = _sweep_sections(folder)
    elif is_run_dir(folder):
        title, sections = _run_sections(folder)
    else:
        raise ScenarioError(str(folder), "is neither a run folder (summary.json) nor a sweep folder (sweep.json); "
                            "give a folder written by asgd-sim run or asgd-sim sweep")
    html_path, md_path = folder / "report.html", folder / "report.md"
    _write_atomic(html_path, render_html(title, sections))
    _write_atomic(md_path, render_markdown(title, sections, folder))
    return html_path, md_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


# ---------------------------------------------------------------------------------- one run


def _run_sections(folder: Path) -> tuple[str, list[Section]]:
    frame = load_run(folder)
    summary, scenario = frame.attrs["summary"], frame.attrs["scenario"]
    title = f"{summary.get('scenario', folder.name)}: {summary.get('algorithm')} with {summary.get('workers')} workers"
    stale = summary.get("staleness", {})
    key = [
        ("stopped", f"{summary.get('stopped')} after {summary.get('updates')} updates"),
        ("simulated time", f"{_num(summary.get('sim_time'))} s (wall {_num(summary.get('wall_time_s'), 3)} s)"),
        ("throughput", f"{_num(summary.get('updates_per_s'))} updates/s, {_num(summary.get('gradients_per_s'))} gradients/s"),
        ("staleness", f"mean {_num(stale.get('mean'), 3)}, p50 {_num(stale.get('p50'))}, p95 {_num(stale.get('p95'))}, max {_num(stale.get('max'))}"),
        ("lock wait", f"mean {_num(summary.get('lock_wait_mean'), 3)} s, p95 {_num(summary.get('lock_wait_p95'), 3)} s"),
        ("gradients", f"{summary.get('gradients')} applied, {summary.get('dropped', 0)} dropped, {summary.get('cancelled', 0)} cancelled"),
    ]
    has_learning = "final_loss" in summary
    if has_learning:
        key.append(("learning", f"final loss {_num(summary.get('final_loss'))}, final accuracy {_num(summary.get('final_accuracy'))}"
                    + (" (DIVERGED)" if summary.get("diverged") else "")))
        target = scenario.get("run", {}).get("target_accuracy")
        if target is not None:
            reached = summary.get("time_to_target")
            key.append((f"time to {target:g} accuracy", f"{_num(reached)} s simulated" if reached is not None else "not reached"))
    if summary.get("deadlock"):
        key.append(("deadlock", "; ".join(summary["deadlock"])))
    sections = [Section("Key numbers", tables=[(["", ""], [[k, v] for k, v in key])])]
    figures = _run_figures(folder)
    if has_learning:
        sections.append(Section("Convergence", text=["Train loss and test accuracy at each evaluation, against simulated time and server updates."],
                                figures=[(figures[n], c) for n, c in (("accuracy_vs_time.png", "test accuracy vs simulated time"),
                                                                       ("loss_vs_time.png", "train loss vs simulated time"),
                                                                       ("accuracy_vs_updates.png", "test accuracy vs server updates"),
                                                                       ("loss_vs_updates.png", "train loss vs server updates")) if n in figures]))
    else:
        sections.append(Section("Convergence", text=["A timing-only run: no learning curves (run without --timing-only for them)."]))
    sections.append(Section("Staleness", text=["Staleness of each applied gradient: server updates between its worker's read and its apply."],
                            figures=[(figures["staleness.png"], "staleness histogram")]))
    sections.append(Section("Worker timeline", text=["Gantt chart of the start of the run: compute (blue), communication (grey), "
                                                     "lock wait (orange), apply (green), work lost to a crash or a closed round (red). "
                                                     "timeline.json in the run folder has all of it (open it in ui.perfetto.dev)."],
                            figures=[(figures["timeline.png"], "worker timeline")]))
    sections.append(Section("Throughput", figures=[(figures["throughput.png"], "server updates per simulated second")]))
    groups = _group_rows(summary)
    if groups:
        sections.append(Section("Worker groups", tables=[(["group", "workers", "gradients applied", "share", "staleness mean", "busy"], groups)]))
    text = (folder / "scenario.toml").read_text(encoding="utf-8") if (folder / "scenario.toml").is_file() else ""
    sections.append(Section("Scenario (resolved)", text=[f"Folder: {folder}"], code=text or json.dumps(scenario, indent=2)))
    return title, sections


def _run_figures(folder: Path) -> dict[str, Path]:
    """The run folder's PNGs; any missing timing plot is drawn from the trace into report_figures/."""
    names = ("accuracy_vs_time.png", "loss_vs_time.png", "accuracy_vs_updates.png", "loss_vs_updates.png", "staleness.png", "timeline.png", "throughput.png")
    found = {n: folder / n for n in names if (folder / n).is_file()}
    missing = [n for n in ("staleness.png", "timeline.png", "throughput.png") if n not in found]
    if missing:
        from ..results.plots import write_timing_plots
        from ..trace import Trace

        extra = folder / FIGURES
        extra.mkdir(exist_ok=True)
        trace = Trace.load(folder)
        write_timing_plots(trace, extra, int(trace.meta.get("workers", 0)) or None)
        found.update({n: extra / n for n in missing})
    return found


def _group_rows(summary: dict[str, Any]) -> list[list[str]]:
    per = summary.get("per_worker") or []
    total = sum(w["gradients"] for w in per) or 1
    rows = []
    for name in dict.fromkeys(w["group"] for w in per):
        mine = [w for w in per if w["group"] == name]
        grads = sum(w["gradients"] for w in mine)
        stale = sum(w["staleness_mean"] * w["gradients"] for w in mine) / grads if grads else 0.0
        rows.append([name, str(len(mine)), str(grads), f"{100 * grads / total:.1f} %", _num(stale, 3),
                     f"{100 * float(np.mean([w['busy_fraction'] for w in mine])):.0f} %"])
    return rows


# ---------------------------------------------------------------------------------- a sweep


def _sweep_sections(folder: Path) -> tuple[str, list[Section]]:
    from .compare import compare, table_columns

    runs = load_sweep(folder)
    desc = runs.attrs["sweep"]
    if runs.empty:
        raise ScenarioError(str(folder), "is a sweep with no finished runs yet; run asgd-sim sweep first")
    figdir = folder / FIGURES
    figdir.mkdir(exist_ok=True)
    ok = int((runs["status"] == "ok").sum())
    title = f"Sweep of {desc.get('name')}: {len(desc.get('points', []))} points x {desc.get('seeds')} seeds"
    setup = [["scenario", str(desc.get("scenario"))], ["mode", "timing only" if desc.get("timing_only") else "timing + numerics"],
             ["runs", f"{len(runs)} ({ok} ok, {len(runs) - ok} failed)"]]
    setup += [["--variant", f"{v['label']}: {'; '.join(v['set']) or '(base)'}"] for v in desc.get("variants", [])]
    setup += [["--grid", f"{g['key']} = {', '.join(g['values'])}"] for g in desc.get("grid", [])]
    setup += [["--set", s] for s in desc.get("set", [])]
    question = _header_comment(Path(desc.get("scenario_file") or desc.get("scenario", "")))
    sections = [Section("The question", text=["From the header of the scenario file:"], code=question, fold=False)] if question else []
    sections.append(Section("What was swept", tables=[(["", ""], setup)]))

    comparison = compare([folder], out=figdir, name="compare")
    cols = table_columns(comparison.rows, comparison.target, comparison.x)
    table_rows = [[("* " if i == comparison.winner else "") + str(get(r)) if j == 0 else str(get(r)) for j, (_, get) in enumerate(cols)]
                  for i, r in enumerate(comparison.rows)]
    winner = comparison.rows[comparison.winner]["label"] if comparison.winner is not None else None
    sections.append(Section("Key numbers", text=[f"Mean ± 95 % interval over seeds. Winner (*): {winner} ({comparison.reason})." if winner else
                                                 "No winner: no run finished."],
                            tables=[([h for h, _ in cols], table_rows)]))
    conv = Section("Convergence" if comparison.metric != "throughput" else "Throughput per point")
    if comparison.metric != "throughput":
        conv.text.append("Mean over seeds with its 95 % band; right: the winning criterion per point.")
        conv.figures.append((comparison.figure, f"{comparison.metric} vs simulated time"))
        loss = compare([folder], metric="train_loss", out=figdir, name="loss")
        conv.figures.append((loss.figure, "train loss vs simulated time"))
    else:
        conv.text.append("A timing-only sweep: no learning curves. Throughput over time per point, and updates/s per point.")
        conv.figures.append((comparison.figure, "throughput per point"))
    sections.append(conv)
    effect = _plot_effect(runs, desc, comparison, figdir / "effect.png")
    if effect:
        sections.append(Section("Effect of the swept value", figures=[(effect, "the winning criterion against the first numeric grid key")]))
    hist = _plot_histograms(runs, figdir / "staleness.png")
    if hist:
        sections.append(Section("Staleness histograms", text=["Staleness of applied gradients, all seeds of a point together."],
                                figures=[(hist, "staleness per point")]))
    if comparison.winner is not None:
        best = comparison.series[comparison.winner].ok
        timeline = Path(best["path"].iloc[0]) / "timeline.png"
        if timeline.is_file():
            sections.append(Section("Worker timeline", text=[f"The winner ({winner}), seed {int(best['seed'].iloc[0])}: compute (blue), "
                                                             "communication (grey), lock wait (orange), apply (green), lost work (red)."],
                                    figures=[(timeline, f"worker timeline of {best['run'].iloc[0]}")]))
    if comparison.metric != "throughput":
        through = compare([folder], metric="throughput", out=figdir, name="throughput")
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
    from .compare import mean_ci
    from ..results.plots import plt

    axes = _numeric_axes(desc, runs)
    if not axes:
        return None
    xkey = axes[0]
    others = [c for c in (["variant"] if desc.get("variants") else []) + [g["key"] for g in desc.get("grid", [])] if c != xkey]
    ok = runs[runs["status"] == "ok"].copy()
    if comparison.reason == "reaches the target first" and comparison.target is not None:
        ycol, ylabel = "_to_target", f"time to {comparison.target:g} accuracy (s)"
        per_run = {}
        for s in comparison.series:
            from .compare import _reach

            for run, curve in zip(s.ok["run"], s.curves):
                per_run[run] = _reach(curve, comparison.target)[0]
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


# ---------------------------------------------------------------------------------- rendering

_CSS = """
body { font: 15px/1.45 -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #4c72b0; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #2b4a80; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ccd; padding: .3em .6em; text-align: right; }
th { background: #eef1f7; }
td:first-child, th:first-child, table.kv td { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { font-size: 12px; color: #666; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; }
footer { margin-top: 3em; font-size: 12px; color: #888; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(title: str, sections: list[Section]) -> str:
    """One page, no external resources: figures inline as data URIs, CSS inline."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for section in sections:
        out.append(f"<h2>{e(section.title)}</h2>")
        out += [f"<p>{e(p)}</p>" for p in section.text]
        for header, rows in section.tables:
            out.append("<table>" if any(header) else '<table class="kv">')
            if any(header):
                out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        for png, caption in section.figures:
            out.append(f'<figure><img src="{_data_uri(png)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>')
        if section.code:
            out.append(f"<details><summary>show</summary><pre>{e(section.code)}</pre></details>" if section.fold else f"<pre>{e(section.code)}</pre>")
    out.append("<footer>Written by asgd-sim report. Self-contained: the figures are embedded.</footer></body></html>")
    return "\n".join(out) + "\n"


def render_markdown(title: str, sections: list[Section], folder: Path) -> str:
    """The same report as Markdown, linking the PNG files relative to ``folder``."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for p in section.text:
            out += [p, ""]
        for header, rows in section.tables:
            head = header if any(header) else ["", ""]
            out.append("| " + " | ".join(cell(h) for h in head) + " |")
            out.append("|" + "|".join(" --- " for _ in head) + "|")
            out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
            out.append("")
        for png, caption in section.figures:
            try:
                link = png.resolve().relative_to(folder.resolve()).as_posix()
            except ValueError:
                link = png.as_posix()
            out += [f"![{caption}]({link})", ""]
        if section.code:
            out += ["```" + ("toml" if "scenario" in section.title.lower() else ""), section.code.rstrip(), "```", ""]
    return "\n".join(out)
