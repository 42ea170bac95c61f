"""Calibrate a scenario's timing from a real run's trace (``asgd-sim calibrate RUN_DIR --out s.toml``).

What is fitted, from the trace alone:
- each worker's compute time: ``t_compute_end - t_compute_start`` of its gradients that were not
  cancelled (a cancelled compute was cut short);
- the network latency (one distribution for every message, as the scenario has): the parameters'
  trip back, ``t_compute_start - t_read`` of a fresh read, and the push, ``t_arrive -
  t_compute_end``. Everything a real message costs (a device transfer, serialisation, the
  worker's own bookkeeping) is in these gaps, so the calibrated network has infinite bandwidth;
- the server's apply time: ``t_applied - t_lock`` of each update row;
- the lock hand-over (``server.lock_handoff``): when an update was already waiting for a lock as
  its holder finished, ``t_lock`` of the next holder minus ``t_applied`` of the last. A real
  server pays it on every contended update (the waiter wakes and takes the GIL, the last holder's
  bookkeeping runs first); where the server's lock is the bottleneck it sets the throughput.

Each sample is fitted by maximum likelihood, the family chosen by AIC (`studies.fits`). The
calibrated scenario is the real run's scenario with one worker group per worker and these timings.

The device model (`studies.calibrate_devices`): workers that share a device (the scenario's
``workers[].device``, or else all of them on one device, as threads on one machine or kernels on
one GPU are) stretch each other's computations. Its capacity and each worker's work distribution
are fitted from the computations' overlap, and it replaces independent compute times when its AIC
is lower (``devices="auto"``, what ``asgd-sim calibrate`` does; the report states both AICs).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..scenario.config import Device, NetworkConfig, Scenario, ServerConfig, WorkerGroup
from ..scenario.distributions import Constant
from ..errors import ScenarioError
from ..trace import CANCELLED, Trace
from .calibrate_devices import SHARED_DEVICE, fit_device
from .fits import fit_distribution

__all__ = ["fit_distribution", "calibrate", "calibrate_models", "calibrate_run", "lock_handoffs", "lock_fifo_grants", "timing_samples",
           "DEVICE_CHOICES"]

DEVICE_CHOICES = ("auto", "always", "none")  # the device model: kept when its AIC is lower, always, never
MIN_LOCK_CHOICES = 50  # contended releases needed to fit server.lock_fifo


def _lock_sequences(trace: Trace, server: ServerConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each lock's holds as (request, start, end) arrays in the order it was granted.

    One sequence per lock: every update row under a global lock, each shard's rows under shard
    locks, whole updates (rows sharing a request and lock time) when an update holds all its locks
    at once. A lock-free server has none.
    """
    if server.lock == "none" or trace.num_update_rows < 2:
        return []
    request, lock, applied, shard = trace.u_request, trace.u_lock, trace.u_applied, trace.u_shard
    if server.atomic and server.lock in ("shard", "rw") and server.shards > 1:
        _, first, group = np.unique(np.stack([request, lock]), axis=1, return_index=True, return_inverse=True)
        ends = np.full(first.size, -np.inf)
        np.maximum.at(ends, group.ravel(), applied)
        sequences = [(request[first], lock[first], ends)]
    elif server.lock == "global" or server.shards == 1:
        sequences = [(request, lock, applied)]
    else:
        sequences = [(request[shard == s], lock[shard == s], applied[shard == s]) for s in range(server.shards)]
    granted = []
    for req, start, end in sequences:
        order = np.argsort(start, kind="stable")
        granted.append((req[order], start[order], end[order]))
    return granted


def lock_handoffs(trace: Trace, server: ServerConfig) -> np.ndarray:
    """Gaps between a lock's holder finishing and the next holder, already waiting, starting."""
    gaps = [(start[1:] - end[:-1])[req[1:] < end[:-1]]  # the next holder asked before this one finished
            for req, start, end in _lock_sequences(trace, server)]
    gaps_all = np.concatenate(gaps) if gaps else np.zeros(0)
    return gaps_all[np.isfinite(gaps_all) & (gaps_all >= 0)]


def lock_fifo_grants(trace: Trace, server: ServerConfig) -> tuple[int, int]:
    """(grants to the longest waiter, grants with a choice): over the releases of a lock that found
    two or more requests waiting, how often the next holder was the one that had asked first.

    The requests waiting at the release of hold i are the later holds j > i with request_j <=
    end_i; the longest waiter is the later hold with the smallest request time, found for every i
    at once from suffix minima (and a choice existed when the second smallest is <= end_i too). A
    request that arrived after the release and still took the lock counts as not FIFO.
    """
    fifo = chosen = 0
    for req, _, end in _lock_sequences(trace, server):
        n = req.size
        if n < 3:
            continue
        # Suffix minimum, its position and the suffix's second smallest request time, from the back.
        first, where, second = np.empty(n), np.empty(n, np.int64), np.empty(n)
        first[-1], where[-1], second[-1] = req[-1], n - 1, np.inf
        for j in range(n - 2, -1, -1):
            if req[j] <= first[j + 1]:
                first[j], where[j], second[j] = req[j], j, first[j + 1]
            else:
                first[j], where[j], second[j] = first[j + 1], where[j + 1], min(second[j + 1], req[j])
        release, nxt = end[:-1], np.arange(1, n)
        choice = second[1:] <= release  # two or more waited when hold i ended
        chosen += int(choice.sum())
        fifo += int((choice & (where[1:] == nxt)).sum())
    return fifo, chosen


def timing_samples(trace: Trace, workers: int, server: ServerConfig | None = None) -> dict[str, Any]:
    """The measured durations: per-worker compute times, message latencies, apply times, hand-overs."""
    t = trace.times
    ok = trace.fate != CANCELLED
    compute = t["t_compute_end"] - t["t_compute_start"]
    per_worker = [compute[(trace.worker == w) & ok & np.isfinite(compute)] for w in range(workers)]
    # A fresh read: the first gradient computed on it (not a K-batch-sync worker reusing its parameters).
    first = np.ones(trace.num_gradients, bool)
    for w in range(workers):
        mine = np.flatnonzero(trace.worker == w)
        if mine.size > 1:
            same = (t["t_read"][mine[1:]] == t["t_read"][mine[:-1]])
            first[mine[1:][same]] = False
    back = (t["t_compute_start"] - t["t_read"])[first & (trace.local_step == 0)]
    push = (t["t_arrive"] - t["t_compute_end"])
    latency = np.concatenate([back[np.isfinite(back)], push[np.isfinite(push)]])
    apply = trace.u_applied - trace.u_lock
    handoff = lock_handoffs(trace, server) if server is not None else np.zeros(0)
    fifo = lock_fifo_grants(trace, server) if server is not None else (0, 0)
    return {"compute": per_worker, "latency": latency[latency >= 0], "apply": apply[np.isfinite(apply) & (apply >= 0)],
            "handoff": handoff, "fifo_grants": fifo}


def calibrate_models(scenario: Scenario, trace: Trace, fit_devices: bool = True) -> tuple[Scenario, Scenario | None, dict[str, Any]]:
    """The scenario fitted to ``trace`` (a real run of ``scenario``) with independent compute
    times, the same with the device model (None if ``fit_devices`` is False), and the report
    (``device_model["kept"]``: whether the device model's AIC is the lower)."""
    M = scenario.num_workers
    samples = timing_samples(trace, M, scenario.server)
    names = [g.name for g in scenario.workers for _ in range(g.count)]
    groups, report = [], {"workers": []}
    for w in range(M):
        if samples["compute"][w].size == 0:
            raise ScenarioError(f"worker {w}", "computed no gradient in this run: nothing to calibrate its compute time from")
        dist, info = fit_distribution(samples["compute"][w])
        groups.append(WorkerGroup(name=f"{names[w]}-{w}", count=1, compute=dist))
        report["workers"].append({"worker": w, **info, "fit": dist.to_dict()})
    fitted = {}
    for key, name in (("latency", "latency"), ("apply", "apply_time"), ("handoff", "lock_handoff")):
        dist, info = fit_distribution(samples[key]) if samples[key].size else (Constant(0.0), {"chosen": "constant", "n": 0})
        fitted[key] = dist
        report[name] = {**info, "fit": dist.to_dict()}
    fifo, chosen = samples["fifo_grants"]
    # Too few contended releases to say: keep the idealised FIFO lock.
    lock_fifo = fifo / chosen if chosen >= MIN_LOCK_CHOICES else 1.0
    report["lock_fifo"] = {"n": chosen, "fifo": fifo, "fit": {"lock_fifo": lock_fifo}}
    independent = dataclasses.replace(
        scenario, name=f"{scenario.name}-calibrated", workers=tuple(groups), racks=(), devices=(),
        network=NetworkConfig(latency=fitted["latency"], bandwidth=math.inf, server_bandwidth=math.inf, compression=1.0),
        server=dataclasses.replace(scenario.server, apply_time=fitted["apply"], lock_handoff=fitted["handoff"], lock_fifo=lock_fifo),
    )
    if not fit_devices:
        return independent, None, report
    device, report["device_model"] = _device_model(scenario, trace, independent)
    return independent, device, report


def _device_model(scenario: Scenario, trace: Trace, independent: Scenario) -> tuple[Scenario, dict[str, Any]]:
    """``independent`` with its workers on devices (the scenario's, or one for all), their
    capacities and work distributions fitted to ``trace``."""
    on = [g.device for g in scenario.workers for _ in range(g.count)]
    if not any(on):
        on = [SHARED_DEVICE] * len(on)
    groups = list(independent.workers)
    devices, info = [], {"devices": [], "aic_device": 0.0, "aic_independent": 0.0}
    for name in dict.fromkeys(d for d in on if d is not None):
        workers = [w for w, d in enumerate(on) if d == name]
        fit = fit_device(trace, workers)
        devices.append(Device(name, fit["capacity"]))
        works = []
        for w, work in zip(workers, fit["work"]):
            dist, _ = fit_distribution(work)
            groups[w] = dataclasses.replace(groups[w], compute=dist, device=name)
            works.append({"worker": w, "fit": dist.to_dict(), "n": int(work.size)})
        info["devices"].append({"name": name, "workers": workers, "capacity": fit["capacity"],
                                "most_in_progress": fit["most_in_progress"], "aic_device": fit["aic_device"],
                                "aic_independent": fit["aic_independent"], "work": works})
        info["aic_device"] += fit["aic_device"]
        info["aic_independent"] += fit["aic_independent"]
    info["kept"] = bool(info["aic_device"] < info["aic_independent"])
    return dataclasses.replace(independent, workers=tuple(groups), devices=tuple(devices)), info


def calibrate(scenario: Scenario, trace: Trace, devices: str = "auto") -> tuple[Scenario, dict[str, Any]]:
    """The scenario with its timing fitted to ``trace`` (a real run of ``scenario``); ``devices``:
    one of DEVICE_CHOICES (see the module docstring)."""
    if devices not in DEVICE_CHOICES:
        raise ScenarioError("--devices", devices, f"must be one of {', '.join(DEVICE_CHOICES)}")
    independent, device, report = calibrate_models(scenario, trace, fit_devices=devices != "none")
    keep = device is not None and (devices == "always" or report["device_model"]["kept"])
    return (device if keep else independent), report  # type: ignore[return-value]


def load_run(run_dir: str | Path) -> tuple[Scenario, Trace]:
    """A run folder's scenario and trace (a clear error if it is not one)."""
    from ..scenario.files import load_scenario

    run_dir = Path(run_dir)
    if not (run_dir / "scenario.toml").is_file() or not (run_dir / "gradients.parquet").is_file():
        raise ScenarioError(str(run_dir), "is not a run folder: it needs scenario.toml, gradients.parquet and updates.parquet")
    return load_scenario(run_dir / "scenario.toml"), Trace.load(run_dir)


def calibrate_run(run_dir: str | Path, out: str | Path | None = None, devices: str = "auto") -> tuple[Scenario, str]:
    """Calibrate from a run folder; write the scenario to ``out``; returns it and a printed report."""
    from ..scenario.files import dump_scenario

    scenario, trace = load_run(run_dir)
    calibrated, report = calibrate(scenario, trace, devices)
    if out is not None:
        dump_scenario(calibrated, out)
    return calibrated, format_report(report)


def format_report(report: dict[str, Any]) -> str:
    def line(label: str, info: dict[str, Any]) -> str:
        fit = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in info["fit"].items() if k != "values"}
        extra = f" ({len(info['fit']['values'])} values)" if "values" in info["fit"] else ""
        return f"{label:<12} n={info.get('n', 0):<6} {fit}{extra}"

    lines = [line(f"worker {w['worker']}", w) for w in report["workers"]]
    lines.append(line("latency", report["latency"]))
    lines.append(line("apply time", report["apply_time"]))
    lines.append(line("lock handoff", report["lock_handoff"]))
    lines.append(line("lock FIFO", report["lock_fifo"]) + f": {report['lock_fifo']['fifo']} of {report['lock_fifo']['n']} "
                 "releases with two or more waiting went to the longest waiter")
    model = report.get("device_model")
    if model is not None:
        lines.append(format_device_model(model))
    return "\n".join(lines)


def format_device_model(model: dict[str, Any]) -> str:
    """The device model's lines: each device's capacity and work fits, and the AIC comparison."""
    lines = []
    for device in model["devices"]:
        lines.append(f"device       {device['name']}: workers {_span(device['workers'])}, capacity {device['capacity']:.3g} "
                     f"(at most {device['most_in_progress']} computations at once in the trace)")
        for w in device["work"]:
            fit = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in w["fit"].items() if k != "values"}
            extra = f" ({len(w['fit']['values'])} values)" if "values" in w["fit"] else ""
            lines.append(f"{'  work ' + str(w['worker']):<12} n={w['n']:<6} {fit}{extra}")
    verdict = "kept: the device model explains the trace better" if model["kept"] else "not kept: independent compute times explain the trace as well"
    lines.append(f"device model AIC {model['aic_device']:.1f} vs {model['aic_independent']:.1f} with independent compute times "
                 f"(lower is better; durations given the computations' overlap): {verdict}")
    return "\n".join(lines)


def _span(workers: list[int]) -> str:
    return f"{workers[0]}-{workers[-1]}" if workers == list(range(workers[0], workers[-1] + 1)) and len(workers) > 1 else ", ".join(map(str, workers))
