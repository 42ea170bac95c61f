"""Simulation vs reality: ``asgd-sim fidelity RUN_DIR``.

Calibrates the run's scenario from its own trace (`asgd_sim.studies.calibrate`), simulates the calibrated
scenario with ``seeds`` seeds (run.seed, run.seed + 1, ...), and compares, side by side:

- throughput (logical updates per second): ``throughput_error`` = |simulated mean - real| / real;
- staleness of applied gradients: mean and p95, and ``staleness_ks``, the Kolmogorov-Smirnov
  distance (largest gap between the two empirical CDFs) between the real staleness and the
  simulated seeds' pooled staleness;
- mean lock wait (request to lock, per update);
- loss against time (with numerics): the simulated seeds form a band; ``loss_gap`` is the largest
  distance, over the real run's evaluation times, between the real loss and the seeds' mean, and
  ``loss_gap_over_band`` divides it by the band's largest width (max - min over seeds): below ~1
  the real curve is as close to the simulation as two simulated seeds are to each other.

Both calibrations are simulated: independent compute times, and the device model (workers sharing
a device, `studies.calibrate_devices`); the report's top-level figures are those of the one the
calibration keeps (the lower AIC: ``calibrated.toml``), ``independent`` and ``device`` hold each
one's, and the printed ``table`` shows both.

Writes ``RUN_DIR/fidelity.json`` and ``RUN_DIR/calibrated.toml``; returns the report with a printed
``table``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScenarioError
from ..trace import APPLIED, Trace

__all__ = ["fidelity", "compare_with_simulation"]


def _loss_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    data = np.genfromtxt(path, delimiter=",", names=True)
    return np.atleast_1d(data["sim_time"]), np.atleast_1d(data["train_loss"])


def compare_with_simulation(real_summary: dict[str, Any], real_trace: Trace, sims: list[dict[str, Any]],
            real_loss: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Side-by-side figures of a real run and simulated runs (each a dict: summary, staleness, loss)."""
    from scipy import stats

    real_stale = real_trace.staleness[real_trace.fate == APPLIED]
    sim_stale = np.concatenate([s["staleness"] for s in sims]) if sims else np.zeros(0)
    throughput = [s["summary"]["updates_per_s"] for s in sims]
    real_tp = float(real_summary["updates_per_s"])
    out: dict[str, Any] = {
        "seeds": len(sims),
        "throughput_real": real_tp,
        "throughput_sim": float(np.mean(throughput)),
        "throughput_sim_std": float(np.std(throughput)),
        "throughput_error": abs(float(np.mean(throughput)) - real_tp) / real_tp if real_tp > 0 else math.nan,
        "staleness_mean_real": float(real_stale.mean()) if real_stale.size else 0.0,
        "staleness_mean_sim": float(sim_stale.mean()) if sim_stale.size else 0.0,
        "staleness_p95_real": float(np.quantile(real_stale, 0.95)) if real_stale.size else 0.0,
        "staleness_p95_sim": float(np.quantile(sim_stale, 0.95)) if sim_stale.size else 0.0,
        "staleness_ks": float(stats.ks_2samp(real_stale, sim_stale).statistic) if real_stale.size and sim_stale.size else math.nan,
        "lock_wait_real": float(real_summary["lock_wait_mean"]),
        "lock_wait_sim": float(np.mean([s["summary"]["lock_wait_mean"] for s in sims])),
    }
    curves = [s["loss"] for s in sims if s.get("loss") is not None]
    if real_loss is not None and curves:
        times, loss = real_loss
        inside = times <= min(float(c[0][-1]) for c in curves)  # compare where every seed has a curve
        times, loss = times[inside], loss[inside]
        band = np.stack([np.interp(times, c[0], c[1]) for c in curves])
        mean, width = band.mean(axis=0), band.max(axis=0) - band.min(axis=0)
        gap = np.abs(loss - mean)
        out.update({
            "loss_final_real": float(loss[-1]), "loss_final_sim": float(mean[-1]),
            "loss_gap": float(gap.max()), "loss_band_width": float(width.max()),
            "loss_gap_over_band": float(gap.max() / width.max()) if width.max() > 0 else math.inf,
            "loss_curve": {"time": times.tolist(), "real": loss.tolist(), "sim_mean": mean.tolist(),
                           "sim_min": band.min(axis=0).tolist(), "sim_max": band.max(axis=0).tolist()},
        })
    out["table"] = format_table(out)
    return out


def format_table(r: dict[str, Any]) -> str:
    rows = [("", "real", f"simulated ({r['seeds']} seeds)", "difference"),
            ("throughput (updates/s)", f"{r['throughput_real']:.4g}", f"{r['throughput_sim']:.4g} ± {r['throughput_sim_std']:.2g}",
             f"{100 * r['throughput_error']:.1f} %"),
            ("staleness mean", f"{r['staleness_mean_real']:.3g}", f"{r['staleness_mean_sim']:.3g}",
             f"{r['staleness_mean_sim'] - r['staleness_mean_real']:+.3g}"),
            ("staleness p95", f"{r['staleness_p95_real']:.3g}", f"{r['staleness_p95_sim']:.3g}", ""),
            ("staleness KS distance", "", "", f"{r['staleness_ks']:.3f}"),
            ("lock wait mean (ms)", f"{1e3 * r['lock_wait_real']:.3g}", f"{1e3 * r['lock_wait_sim']:.3g}", "")]
    if "loss_gap" in r:
        rows.append(("final train loss", f"{r['loss_final_real']:.4g}", f"{r['loss_final_sim']:.4g}",
                     f"max gap {r['loss_gap']:.3g} = {r['loss_gap_over_band']:.2f} x seed band"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def fidelity(run_dir: str | Path, seeds: int = 5, numerics: bool = True) -> dict[str, Any]:
    """Calibrate, simulate ``seeds`` seeds of each calibration, compare, and write ``RUN_DIR/fidelity.json``."""
    from ..scenario.files import dump_scenario
    from .calibrate import calibrate_models, format_device_model, load_run

    run_dir = Path(run_dir)
    if seeds < 1:
        raise ScenarioError("--seeds", f"= {seeds}: must be >= 1")
    scenario, real_trace = load_run(run_dir)
    independent, device, report = calibrate_models(scenario, real_trace)
    kept = "device" if report["device_model"]["kept"] else "independent"
    dump_scenario(device if kept == "device" else independent, run_dir / "calibrated.toml")
    real_summary = json.loads((run_dir / "summary.json").read_text())
    real_loss = _loss_curve(run_dir) if numerics else None
    models = {"independent": independent, "device": device}
    figures = {name: compare_with_simulation(real_summary, real_trace, _simulate(sc, seeds, real_loss is not None), real_loss)
               for name, sc in models.items()}
    out = dict(figures[kept])
    out["kept"] = kept
    out["independent"] = {k: v for k, v in figures["independent"].items() if k != "table"}
    out["device"] = {k: v for k, v in figures["device"].items() if k != "table"}
    capacities = ", ".join(f"{d.name} {d.capacity:.3g}" for d in device.devices)  # type: ignore[union-attr]
    out["table"] = "\n\n".join([
        f"independent compute times{' (kept)' if kept == 'independent' else ''}:\n{figures['independent']['table']}",
        f"device model, capacity {capacities}{' (kept)' if kept == 'device' else ''}:\n{figures['device']['table']}",
        format_device_model(report["device_model"]).splitlines()[-1] + "\n" + _lock_line(report["lock_fifo"])])
    out["calibration"] = report
    out["run_dir"] = str(run_dir)
    (run_dir / "fidelity.json").write_text(json.dumps({k: v for k, v in out.items()}, indent=2, default=_plain) + "\n")
    return out


def _lock_line(lock: dict[str, Any]) -> str:
    """The lock's grant order as calibrated (`calibrate.lock_fifo_grants`)."""
    from .calibrate import MIN_LOCK_CHOICES

    if not lock["n"]:
        return "lock grants: no release found two updates waiting (server.lock_fifo = 1, FIFO)"
    return (f"lock grants: {lock['fifo']} of {lock['n']} releases with two or more waiting went to the longest waiter "
            f"(server.lock_fifo = {lock['fit']['lock_fifo']:.3g}{'' if lock['n'] >= MIN_LOCK_CHOICES else ': too few to fit, FIFO kept'})")


def _simulate(calibrated: Any, seeds: int, numerics: bool) -> list[dict[str, Any]]:
    """``seeds`` runs of ``calibrated`` (run.seed, run.seed + 1, ...): summaries, staleness, loss."""
    from ..runner import run_scenario

    sims = []
    for i in range(seeds):
        sc = dataclasses.replace(calibrated, run=dataclasses.replace(calibrated.run, seed=calibrated.run.seed + i))
        result = run_scenario(sc, timing_only=not numerics)
        loss = (result.metrics["sim_time"], result.metrics["train_loss"]) if numerics else None
        sims.append({"summary": result.summary, "staleness": result.trace.staleness[result.trace.fate == APPLIED], "loss": loss})
    return sims


def _plain(value: Any) -> Any:
    """JSON for numpy values in the calibration report."""
    return value.tolist() if isinstance(value, np.ndarray) else float(value)
