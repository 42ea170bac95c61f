"""``asgd-sim report DIR``: one self-contained HTML page and a Markdown twin for a run or a sweep.

    asgd-sim report results/straggler                           # a sweep
    asgd-sim report results/straggler --target train_loss<=0.1 --baseline sync
    asgd-sim report results/demo                                # one run

A run's report: the key numbers (with the outcome: reached the target, diverged or stalled),
convergence plots, the staleness histogram, the worker timeline (Gantt of compute, communication
and lock wait), throughput over time, per-group statistics and the resolved scenario. A sweep's
report (`report_sweep`): what was swept, the comparison table with outcomes, the winner or the
tied leaders, the tuning of each point (``sweep --tune``), convergence with 95 % bands, the
winning criterion against the swept value, staleness histograms, the leader's worker timeline,
throughput over time and any failed runs. Rendering: `report_render`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScenarioError
from ..results.load import is_run_dir, is_sweep_dir, load_run
from .report_render import FIGURES, Section, num, render_html, render_markdown, write_atomic
from .targets import check_target, parse_target, reach

__all__ = ["write_report", "Section"]


def write_report(path: str | Path, target: str | float | None = None, baseline: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into the run or sweep folder ``path``.

    ``target``: a time-to-target column on any metric (``studies.targets``); ``baseline``: a
    sweep point's label, for paired differences to it.
    """
    folder = Path(path)
    if is_sweep_dir(folder):
        from .report_sweep import sweep_sections

        title, sections = sweep_sections(folder, target, baseline)
    elif is_run_dir(folder):
        if baseline is not None:
            raise ScenarioError("--baseline", f"= {baseline!r}: a run folder has no series to compare with; give a sweep folder")
        title, sections = _run_sections(folder, target)
    else:
        raise ScenarioError(str(folder), "is neither a run folder (summary.json) nor a sweep folder (sweep.json); "
                            "give a folder written by asgd-sim run or asgd-sim sweep")
    html_path, md_path = folder / "report.html", folder / "report.md"
    write_atomic(html_path, render_html(title, sections))
    write_atomic(md_path, render_markdown(title, sections, folder))
    return html_path, md_path


# ---------------------------------------------------------------------------------- one run


def _run_sections(folder: Path, target: str | float | None = None) -> tuple[str, list[Section]]:
    frame = load_run(folder)
    summary, scenario = frame.attrs["summary"], frame.attrs["scenario"]
    title = f"{summary.get('scenario', folder.name)}: {summary.get('algorithm')} with {summary.get('workers')} workers"
    stale = summary.get("staleness", {})
    key = [
        ("stopped", f"{summary.get('stopped')} after {summary.get('updates')} updates"),
        ("simulated time", f"{num(summary.get('sim_time'))} s (wall {num(summary.get('wall_time_s'), 3)} s)"),
        ("throughput", f"{num(summary.get('updates_per_s'))} updates/s, {num(summary.get('gradients_per_s'))} gradients/s"
         + (f" (steady state, second half: {num(summary['steady_updates_per_s'])} updates/s, "
            f"{num(summary.get('steady_gradients_per_s'))} gradients/s)" if "steady_updates_per_s" in summary else "")),
        ("staleness", f"mean {num(stale.get('mean'), 3)}, p50 {num(stale.get('p50'))}, p95 {num(stale.get('p95'))}, max {num(stale.get('max'))}"),
        ("lock wait", f"per push: mean {num(summary.get('lock_wait_mean'), 3)} s, p95 {num(summary.get('lock_wait_p95'), 3)} s"
         + (f"; per shard row: mean {num(summary['lock_wait_row_mean'], 3)} s" if "lock_wait_row_mean" in summary else "")),
        ("gradients", f"{summary.get('gradients')} applied, {summary.get('dropped', 0)} dropped, {summary.get('cancelled', 0)} cancelled"),
    ]
    has_learning = "final_loss" in summary
    if has_learning:
        outcome = "DIVERGED" if summary.get("diverged") else "STALLED: no progress over the last half" if summary.get("stalled") else ""
        key.append(("learning", f"final loss {num(summary.get('final_loss'))}, final accuracy {num(summary.get('final_accuracy'))}"
                    + (f" ({outcome})" if outcome else "")))
        key += _target_rows(frame, summary, scenario, target)
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


def _target_rows(frame: Any, summary: dict[str, Any], scenario: dict[str, Any], target: str | float | None) -> list[tuple[str, str]]:
    """Time to the run's own target (exact when it stopped there) and to ``target``, if given."""
    rows = []
    own = scenario.get("run", {}).get("target_accuracy")
    if own is not None:
        at = summary.get("time_to_target")
        how = (f"exact: update {summary.get('updates_to_target')}" if summary.get("time_to_target_exact")
               else "the first evaluation at it, up to run.eval_every updates late")
        rows.append((f"time to {own:g} accuracy", f"{num(at)} s simulated ({how})" if at is not None else "not reached"))
    wanted = parse_target(target)
    if wanted is not None and not (own is not None and wanted.is_accuracy(own)):
        check_target(wanted, frame.columns)
        found = reach(frame, wanted, "sim_time", summary, own)
        rows.append((f"time to {wanted.text}", "not reached" if not found.reached else f"{num(found.value)} s simulated"
                     + ("" if found.exact else f" (interpolated between evaluations {num(found.resolution, 3)} s apart)")))
    return rows


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
        write_timing_plots(trace, extra, _scenario_of(folder))
        found.update({n: extra / n for n in missing})
    return found


def _scenario_of(folder: Path) -> Any:
    """The run's resolved scenario, or None if its scenario.toml no longer loads (an older version's)."""
    from ..scenario.files import load_scenario

    try:
        return load_scenario(folder / "scenario.toml")
    except (ScenarioError, OSError):
        return None


def _group_rows(summary: dict[str, Any]) -> list[list[str]]:
    per = summary.get("per_worker") or []
    total = sum(w["gradients"] for w in per) or 1
    rows = []
    for name in dict.fromkeys(w["group"] for w in per):
        mine = [w for w in per if w["group"] == name]
        grads = sum(w["gradients"] for w in mine)
        stale = sum(w["staleness_mean"] * w["gradients"] for w in mine) / grads if grads else 0.0
        rows.append([name, str(len(mine)), str(grads), f"{100 * grads / total:.1f} %", num(stale, 3),
                     f"{100 * float(np.mean([w['busy_fraction'] for w in mine])):.0f} %"])
    return rows


