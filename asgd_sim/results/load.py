"""Result folders as pandas frames, for notebooks and analysis/ scripts.

    import asgd_sim
    run = asgd_sim.load_run("results/demo")             # metrics over time: one row per evaluation
    run.attrs["summary"]["staleness"]["mean"]           # everything summary.json holds
    runs = asgd_sim.load_sweep("results/straggler")     # one row per run: swept values, seed, summary
    curves = asgd_sim.load_sweep("results/straggler", table="metrics")   # every run's metrics, stacked

These read result folders only (what ``asgd-sim run`` and ``asgd-sim sweep`` write), never engine
internals (docs/DESIGN.md "Results and files"). A timing-only run has no learning curves; its metrics
frame is derived from the trace (updates, simulated time, throughput, running staleness mean) with
the learning measures left NaN, so every run has the same columns.

A sweep's ``runs.parquet`` is a cache of its ``runs/*/result.json`` files: `load_sweep` rebuilds
it when it is missing or older than any of them (a sweep that was interrupted, or is running).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScenarioError
from .columns import FRAME_COLUMNS as METRIC_COLUMNS
from .columns import metrics_frame

__all__ = ["load_run", "load_sweep", "build_runs_table", "write_runs_table", "is_run_dir", "is_sweep_dir",
           "METRIC_COLUMNS", "flatten_summary"]

RUN_TABLES = ("metrics", "gradients", "updates")
SWEEP_TABLES = ("runs", "metrics")


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "summary.json").is_file()


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / "sweep.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------- one run


def load_run(path: str | Path, table: str = "metrics") -> pd.DataFrame:
    """A run folder as a frame: ``metrics`` (default), ``gradients`` or ``updates``.

    ``metrics`` has columns update, sim_time, train_loss, test_accuracy, grad_norm_sq,
    suboptimality, staleness_mean (so far) and throughput (updates per simulated second since the
    previous row), then any other column of the run's metrics.csv; a measure a run did not take (a
    timing-only run's losses, a folder written before a column existed) is NaN. The frame's ``attrs``
    hold ``summary`` (summary.json as a dict), ``scenario`` (scenario.toml as a dict) and ``path``.
    """
    folder = Path(path)
    if not is_run_dir(folder):
        raise ScenarioError(str(folder), "is not a run folder (it has no summary.json); give a folder written by "
                            "asgd-sim run, or one of a sweep's runs/<point>-seed<k> folders")
    if table not in RUN_TABLES:
        raise ScenarioError("table", f"= {table!r}: must be one of {', '.join(RUN_TABLES)}")
    if table == "metrics":
        frame = _metrics_frame(folder)
    else:
        frame = pd.read_parquet(folder / f"{table}.parquet")
    frame.attrs.update(summary=_read_json(folder / "summary.json"), scenario=_scenario(folder), path=str(folder))
    return frame


def _scenario(folder: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((folder / "scenario.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _metrics_frame(folder: Path) -> pd.DataFrame:
    csv = folder / "metrics.csv"
    # (a target or a curve may be on any column the run's metrics.csv has: all are kept)
    return metrics_frame(pd.read_csv(csv) if csv.is_file() else _metrics_from_trace(folder))


def _metrics_from_trace(folder: Path) -> pd.DataFrame:
    """The metrics rows of a timing-only run, every ``run.eval_every`` updates of shard 0."""
    import pyarrow.parquet as pq

    every = int(_scenario(folder).get("run", {}).get("eval_every", 100))
    ups = pq.read_table(folder / "updates.parquet", columns=["shard", "version", "t_applied"]).to_pandas()
    ups = ups[ups["shard"] == 0].sort_values("version")
    grads = pq.read_table(folder / "gradients.parquet", columns=["t_applied", "staleness", "fate"]).to_pandas()
    grads = grads[grads["fate"].astype(str) == "applied"].sort_values("t_applied")
    versions, times = ups["version"].to_numpy(np.int64), ups["t_applied"].to_numpy(float)
    picks = np.flatnonzero(versions % every == 0)
    update = np.concatenate([[0], versions[picks]])
    sim_time = np.concatenate([[0.0], times[picks]])
    done = np.searchsorted(grads["t_applied"].to_numpy(float), sim_time, side="right")
    cumulative = np.concatenate([[0.0], np.cumsum(grads["staleness"].to_numpy(float))])
    with np.errstate(invalid="ignore", divide="ignore"):
        stale = np.where(done > 0, cumulative[done] / np.maximum(done, 1), 0.0)
    return pd.DataFrame({"update": update, "sim_time": sim_time, "staleness_mean": stale})


# ---------------------------------------------------------------------------------- sweeps


def load_sweep(path: str | Path, table: str = "runs") -> pd.DataFrame:
    """A sweep folder as a frame: ``runs`` (default: one row per run) or ``metrics``.

    ``runs``: run, point, label, the variant and swept values (one column per ``--grid`` key,
    named as on the command line; for a sweep run with ``--tune``, one per tuned key, and
    tune_index, tune_label and tune_chosen: whether the value is its point's choice, see
    `results.tuning`), seed, status ("ok" or "error"), error, wall_s and every
    summary field (nested ones flattened with "_": staleness_mean, staleness_p95, ...; lists as
    JSON text). ``metrics``: the metrics frames of the successful runs stacked, with the run,
    point, label, variant, swept values and seed in front. ``attrs["sweep"]`` is sweep.json.
    """
    folder = Path(path)
    if not is_sweep_dir(folder):
        raise ScenarioError(str(folder), "is not a sweep folder (it has no sweep.json); give the --out folder of asgd-sim sweep")
    if table not in SWEEP_TABLES:
        raise ScenarioError("table", f"= {table!r}: must be one of {', '.join(SWEEP_TABLES)}")
    runs = _runs_table(folder)
    if table == "metrics":
        keys = _key_columns(runs)
        parts = []
        for row in runs[runs["status"] == "ok"].to_dict("records"):
            frame = load_run(folder / "runs" / row["run"])
            for column in reversed(keys):
                frame.insert(0, column, row[column])
            parts.append(frame)
        out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*keys, *METRIC_COLUMNS])
    else:
        out = runs
    out.attrs["sweep"] = _read_json(folder / "sweep.json")
    out.attrs["path"] = str(folder)
    return out


def _key_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that say which run a row is: run, point, label, variant, the axes, seed."""
    return list(runs.columns[: list(runs.columns).index("seed") + 1])


def _runs_table(folder: Path) -> pd.DataFrame:
    cached = folder / "runs.parquet"
    results = list((folder / "runs").glob("*/result.json"))
    if cached.is_file():
        stamp = cached.stat().st_mtime
        if all(r.stat().st_mtime <= stamp for r in results):
            frame = pd.read_parquet(cached)
            if len(frame) == len(results):
                return frame
    frame = build_runs_table(folder)
    try:
        write_runs_table(frame, folder)
    except OSError:  # a read-only copy of a sweep: the frame is still right
        pass
    return frame


def flatten_summary(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summary fields as flat columns: staleness.mean -> staleness_mean; lists as JSON."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_summary(value, f"{name}_"))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def build_runs_table(path: str | Path) -> pd.DataFrame:
    """The runs table from ``runs/*/result.json`` (what ``runs.parquet`` caches), sorted by run."""
    folder = Path(path)
    sweep = _read_json(folder / "sweep.json")
    axes = [axis["key"] for axis in sweep.get("grid", [])]
    tuned = [axis["key"] for axis in sweep.get("tune", [])]
    has_variant = bool(sweep.get("variants"))
    rows = []
    for result_file in sorted((folder / "runs").glob("*/result.json")):
        try:
            record = _read_json(result_file)
        except (OSError, json.JSONDecodeError):
            continue  # not committed (cannot happen with the rename protocol, but never crash a reader)
        row: dict[str, Any] = {"run": record["run"], "point": record["point"], "label": record.get("label", "")}
        values = record.get("values", {})
        if has_variant:
            row["variant"] = values.get("variant")
        for key in axes:
            row[key] = values.get(key)
        if tuned:  # --tune: the value this run had (every point runs at each)
            tune = record.get("tune") or {}
            row.update({key: tune.get("values", {}).get(key) for key in tuned})
            row.update(tune_index=tune.get("index"), tune_label=tune.get("label"))
        row.update(seed=record["seed"], status=record["status"], error=record.get("error"), wall_s=record.get("wall_s"))
        for key, value in flatten_summary(record.get("summary") or {}).items():
            row.setdefault(key, value)
        rows.append(row)
    frame = pd.DataFrame(rows)
    tune_columns = [*tuned, "tune_index", "tune_label"] if tuned else []
    if frame.empty:
        frame = pd.DataFrame(columns=["run", "point", "label", *(["variant"] if has_variant else []), *axes, *tune_columns, "seed",
                                      "status", "error", "wall_s"])
    elif tuned:
        from .tuning import mark_chosen

        frame = mark_chosen(frame)
        frame.insert(list(frame.columns).index("seed"), "tune_chosen", frame.pop("tune_chosen"))
    for column in frame.columns:  # one type per column, as Parquet needs
        values = [v for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        kinds = {type(v) for v in values}
        if len(kinds) > 1 and not kinds <= {int, float, bool}:
            frame[column] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in frame[column]]
    return frame.reset_index(drop=True)


def write_runs_table(frame: pd.DataFrame, folder: str | Path) -> Path:
    """Write ``runs.parquet`` atomically (a reader never sees half a file)."""
    target = Path(folder) / "runs.parquet"
    tmp = target.with_name(f".runs.parquet.{os.getpid()}.tmp")  # one per writer: a sweep and a reader may both rebuild
    frame.to_parquet(tmp, index=False)
    tmp.replace(target)
    return target
