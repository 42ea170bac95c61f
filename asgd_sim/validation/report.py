"""The report of ``asgd-sim validate``: validation.json, validation.md, validation.html and figures.

It is written from the checks' outcomes (`framework.CheckOutcome`), with the cells of the printed
table (`format`). The figures are drawn from the data each check recorded (``rec.figure``) with
matplotlib's Agg backend, saved as PNG beside the report and embedded in the HTML as base64 data
URIs, so the HTML file is self-contained (no external resources).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .format import fmt_result, fmt_tolerance, fmt_value  # noqa: E402
from .framework import OMITTED, CheckOutcome, outcome_dict  # noqa: E402

__all__ = ["write_report", "FIGURES"]

BLUE, ORANGE, GREY, RED = "#4c72b0", "#dd8452", "#555555", "#c44e52"


# --- figures: one function per recorded data set ------------------------------------------------

def fig_critical_step(d: dict[str, Any], ax_row: Any) -> str:
    ax = ax_row[0]
    ax.plot(d["curve_tau"], d["curve"], ".-", color=GREY, lw=1.2, ms=3, label="theory 2 sin(pi/(2(2tau+1))) / lambda")
    taus, measured = np.asarray(d["taus"]), np.asarray(d["measured"], float)
    ax.plot(taus, measured, "o", color=BLUE, ms=5, label="measured on real runs (multisection)")
    ax.set_yscale("log")
    ax.set_xlabel("staleness tau (round-robin workers M = tau + 1)")
    ax.set_ylabel(f"critical step eta (curvature lambda = {d['lam']:g})")
    ax.set_title("C1: stability boundary of delayed SGD")
    ax.legend(frameon=False, fontsize=8)
    return "Largest stable step against the fixed delay tau: measured by searching the step on real runs, and Levin & May's curve."


def fig_staleness(d: dict[str, Any], ax_row: Any) -> str:
    for ax, (M, h) in zip(ax_row, d.items()):
        ax.bar(h["k"], h["empirical"], width=0.9, color=BLUE, label="simulated")
        ax.plot(h["k"], h["geometric"], ".--", color="black", lw=1, ms=3, label="Geometric(1/M)")
        ax.set_title(f"C2: staleness, M = {M} exponential workers", fontsize=9)
        ax.set_xlabel("staleness tau")
        ax.legend(frameon=False, fontsize=7)
    ax_row[0].set_ylabel("fraction of updates")
    return "Staleness histograms of pure async SGD with exponential compute times against the geometric law P(tau=k) = (1/M)(1-1/M)^k."


def fig_momentum(d: dict[str, Any], ax_row: Any) -> str:
    ax = ax_row[0]
    t, mean, se = np.asarray(d["t"]), np.asarray(d["mean"]), np.asarray(d["stderr"])
    ax.fill_between(t, mean - 2 * se, mean + 2 * se, color=BLUE, alpha=0.25, lw=0)
    ax.plot(t, mean, color=BLUE, label=f"mean iterate, {d['R']} runs (+-2 s.e.)")
    ax.plot(t, d["heavy_ball"], "--", color="black", lw=1, label="heavy ball, mu = 1 - 1/M")
    ax.plot(t, d["control"], ":", color=RED, lw=1, label="control: constant compute (fixed delay)")
    ax.set_ylim(-2, 2)
    ax.set_xlabel("update t")
    ax.set_ylabel("w_t")
    ax.set_title(f"C3: asynchrony begets momentum (M = {d['M']})")
    ax.legend(frameon=False, fontsize=8)
    return "Mean iterate of async SGD on a 1-D quadratic against the heavy-ball recursion with implicit momentum 1 - 1/M."


def fig_dutta(d: dict[str, Any], ax_row: Any) -> str:
    ax = ax_row[0]
    x = np.arange(len(d["variants"]))
    ax.bar(x - 0.2, d["predicted"], width=0.4, color=GREY, label="Dutta et al. (theory)")
    ax.bar(x + 0.2, d["simulated"], width=0.4, color=BLUE, label="simulated")
    ax.set_xticks(x, [v.replace("_", "-") for v in d["variants"]], fontsize=8)
    ax.set_ylabel("time per iteration")
    ax.set_title(f"C4: runtime per iteration, P = {d['P']}, K = {d['K']}, Exp(1)")
    ax.legend(frameon=False, fontsize=8)
    return "Expected wall time per iteration of the five variants of Dutta et al. 2018, theory vs simulation."


def fig_error_floor(d: dict[str, Any], ax_row: Any) -> str:
    ax = ax_row[0]
    ax.plot(d["ks"], d["predicted"], "--", color=GREY, label="eta sigma^2 / (2K(2 - eta c))")
    ax.plot(d["ks"], d["simulated"], "o", color=BLUE, label="simulated (sync, K workers)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("K (gradients averaged per update)")
    ax.set_ylabel("stationary excess loss")
    ax.set_title("C4: error floor of K-averaged SGD")
    ax.legend(frameon=False, fontsize=8)
    return "Stationary excess loss on a quadratic with gradient noise, against the exact AR(1) floor."


def fig_ssp(d: dict[str, Any], ax_row: Any) -> str:
    ax = ax_row[0]
    s = np.asarray(d["s"], float)
    x = np.where(s == 0, 0.5, s)  # log axis: draw s = 0 at 0.5
    ax.plot(x, d["simulated"], "o-", color=BLUE, label="simulated")
    if d["reference"]:
        ref_s = np.asarray([float(k) for k in d["reference"]])
        ax.plot(np.where(ref_s == 0, 0.5, ref_s), list(d["reference"].values()), "x", color="black", ms=7, label="THEORY.md reference")
    ax.axhline(d["bsp"], color=GREY, ls=":", lw=1, label="BSP P/H_P")
    ax.axhline(d["async"], color=GREY, ls="--", lw=1, label="async P")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}" for v in s])
    ax.minorticks_off()
    ax.set_xlabel("staleness bound s (log scale; s = 0 drawn at 0.5)")
    ax.set_ylabel("updates per unit time")
    ax.set_title(f"C8: SSP throughput, P = {d['P']} Exp(1) workers")
    ax.legend(frameon=False, fontsize=8)
    return "Throughput of stale synchronous parallel against the staleness bound s, between BSP and fully asynchronous."


def fig_lock(d: dict[str, Any], ax_row: Any) -> str:
    M = np.asarray(d["M"])
    exp_points = [p for p in d["points"] if p["compute"] == "exponential"]
    other = [p for p in d["points"] if p["compute"] != "exponential"]
    for ax, key, label in ((ax_row[0], "X", "throughput X (updates per unit time)"), (ax_row[1], "Wq", "mean lock wait Wq")):
        ax.plot(M, d[f"closed_{key}"], color=BLUE, lw=1.5, label="closed queue (machine repairman)")
        ax.plot(M, np.asarray(d[f"open_{key}"], float), "--", color=RED, lw=1.2, label="open M/M/1 (wrong)")
        ax.plot([p["M"] for p in exp_points], [p[key] for p in exp_points], "o", color="black", ms=5, label="simulated, Exp compute")
        if other:
            ax.plot([p["M"] for p in other], [p[key] for p in other], "s", mfc="none", color=ORANGE, ms=8,
                    label=f"simulated, {other[0]['compute']}")
        ax.set_xlabel("workers M")
        ax.set_ylabel(label)
        ax.legend(frameon=False, fontsize=7)
    ax_row[0].axhline(1 / d["hold"], color=GREY, ls=":", lw=1)
    top = max(max(d["closed_Wq"]), max(p["Wq"] for p in d["points"]))
    ax_row[1].set_ylim(0, 1.3 * top)
    ax_row[0].set_title(f"C12: global lock, think Z = {d['think']:g}, hold S = Exp({d['hold']:g})", fontsize=9)
    ax_row[1].set_title("open M/M/1 blows up at M S/Z = 1; the closed queue saturates at 1/S", fontsize=9)
    return "A server lock is a closed queue: throughput and lock wait against M, with the (wrong) open M/M/1 model for contrast."


# figure key -> (check, number of panels, draw function)
FIGURES: dict[str, tuple[str, int, Callable[[Any, Any], str]]] = {
    "critical_step": ("C1", 1, fig_critical_step),
    "staleness_histograms": ("C2", 3, fig_staleness),
    "momentum": ("C3", 1, fig_momentum),
    "dutta_times": ("C4", 1, fig_dutta),
    "error_floor": ("C4", 1, fig_error_floor),
    "ssp_throughput": ("C8", 1, fig_ssp),
    "lock": ("C12", 2, fig_lock),
}


def draw_figures(outcomes: Sequence[CheckOutcome], out: Path) -> dict[str, list[tuple[str, str]]]:
    """PNG files for every figure the checks recorded: check -> [(file name, caption)]."""
    drawn: dict[str, list[tuple[str, str]]] = {}
    for outcome in outcomes:
        for key, data in outcome.figures.items():
            if key not in FIGURES or not data:
                continue
            _, panels, draw = FIGURES[key]
            if key == "staleness_histograms":
                panels = len(data)
            fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels if panels > 1 else 6.4, 3.8), squeeze=False)
            caption = draw(data, axes[0])
            fig.tight_layout()
            name = f"{outcome.name.lower()}_{key}.png"
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            drawn.setdefault(outcome.name, []).append((name, caption))
    return drawn


# --- the files -----------------------------------------------------------------------------------

def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


def _row_cells(row: Any) -> list[str]:
    return [row.check, row.quantity, fmt_value(row.predicted), fmt_value(row.simulated),
            fmt_tolerance(row.tolerance, row.kind), fmt_result(row), f"{row.seconds:.1f} s"]


HEADER = ["check", "quantity", "predicted", "simulated", "tolerance", "result", "time"]


def write_report(outcomes: Sequence[CheckOutcome], out: Path, *, quick: bool, seconds: float) -> None:
    """validation.json, validation.md, validation.html and the PNG figures in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for o in outcomes for row in o.rows if row.kind != "info"]
    passed = sum(row.passed for row in rows)
    stamp = datetime.now().isoformat(timespec="seconds")
    mode = "quick" if quick else "full"
    meta = {"created": stamp, "mode": mode, "seconds": seconds, "rows": len(rows), "passed": passed,
            "all_passed": passed == len(rows), "omitted": OMITTED}
    (out / "validation.json").write_text(json.dumps(_json_safe({**meta, "checks": [outcome_dict(o) for o in outcomes]}),
                                                    indent=1, allow_nan=False) + "\n")
    figures = draw_figures(outcomes, out)
    summary = f"{passed}/{len(rows)} rows passed ({mode} mode, {seconds:.1f} s wall, {stamp})."
    (out / "validation.md").write_text(_markdown(outcomes, figures, summary))
    (out / "validation.html").write_text(_html(outcomes, figures, summary, out))


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in params.items())


def _markdown(outcomes: Sequence[CheckOutcome], figures: dict[str, list[tuple[str, str]]], summary: str) -> str:
    lines = ["# Does the theory hold? (asgd-sim validate)", "", summary, "",
             "Each row compares a closed form of THEORY.md (asgd_sim.theory, evaluated at the check's parameters) "
             "with what real simulator runs measured. Tolerances: rel = relative, abs = absolute, "
             "<= / >= bound = the prediction is an upper / lower bound; report only (INFO) = no verdict.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _row_cells(row)) + " |" for o in outcomes for row in o.rows]
    for o in outcomes:
        lines += ["", f"## {o.name}: {o.title}", "", f"{'PASS' if o.passed else 'FAIL'} in {o.seconds:.1f} s. "
                  f"Parameters: `{_params_text(o.params)}`", ""]
        lines += [f"- {row.quantity}: {row.note}" for row in o.rows if row.note]
        for name, caption in figures.get(o.name, []):
            lines += ["", f"![{caption}]({name})", "", f"*{caption}*"]
    for name, why in OMITTED.items():
        lines += ["", f"## {name}", "", why[0].upper() + why[1:] + "."]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}tr.fail td{background:#fde2e2}.pass{color:#1a7f37;font-weight:600}
.fail .res{color:#c00;font-weight:600}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:13px;color:#555}
code{background:#f4f4f4;padding:1px 4px}"""


def _html(outcomes: Sequence[CheckOutcome], figures: dict[str, list[tuple[str, str]]], summary: str, out: Path) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>asgd-sim validate</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>Does the theory hold?</h1>", f"<p>{esc(summary)}</p>",
             "<p>Each row compares a closed form of THEORY.md (<code>asgd_sim.theory</code>, evaluated at the check's "
             "parameters) with what real simulator runs measured. Tolerances: rel = relative, abs = absolute, "
             "&le; / &ge; bound = the prediction is an upper / lower bound; report only (INFO) = no verdict.</p>",
             "<table><tr>" + "".join(f"<th>{h}</th>" for h in HEADER) + "</tr>"]
    for o in outcomes:
        for row in o.rows:
            cells = _row_cells(row)
            css = "" if row.passed else " class='fail'"
            parts.append(f"<tr{css}>" + "".join(f"<td>{esc(c)}</td>" for c in cells[:5])
                         + f"<td class='res{' pass' if cells[5] == 'PASS' else ''}'>{cells[5]}</td><td>{cells[6]}</td></tr>")
    parts.append("</table>")
    for o in outcomes:
        parts.append(f"<h2>{esc(o.name)}: {esc(o.title)}</h2>")
        verdict = "PASS" if o.passed else "FAIL"
        parts.append(f"<p>{verdict} in {o.seconds:.1f} s. Parameters: <code>{esc(_params_text(o.params))}</code></p>")
        notes = [f"<li>{esc(row.quantity)}: {esc(row.note)}</li>" for row in o.rows if row.note]
        if notes:
            parts.append("<ul>" + "".join(notes) + "</ul>")
        for name, caption in figures.get(o.name, []):
            data = base64.b64encode((out / name).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
    for name, why in OMITTED.items():
        parts.append(f"<h2>{esc(name)}</h2><p>{esc(why[0].upper() + why[1:])}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
