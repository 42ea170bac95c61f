"""Sweeps: one scenario over a grid of overrides and seeds, in parallel, resumable.

    asgd-sim sweep scenarios/straggler.toml --grid 'workers[1].compute.mean=0.05,0.2' \\
        --variant async:algorithm.kind=async --variant 'backup:algorithm.kind=sync;algorithm.backup=1' \\
        --seeds 3 --jobs 2 --out results/straggler

The points are the cartesian product of the variants (labelled sets of overrides, for choices that
change several keys together) and the ``--grid`` axes (``key=v1,v2,...``, the ``--set`` syntax);
each point runs with seeds 0..N-1 (``run.seed=k``: common random numbers across points). A key may
be set by a variant or by the grid, not both. Every point is validated before anything runs, so a
bad key or value fails at once.

``--tune key=v1,v2,...`` (or ``key=log:LOW:HIGH:N``, N values evenly spaced on a log scale) runs
every point at every tuned value and keeps, per point, the best one by the criterion of
`results.tuning` (time to target, else final loss): a fair comparison puts each method at its own
best step. Runs of a tuned sweep are named ``<point>-t<value index>-seed<k>``.

The folder::

    DIR/sweep.json                   the resolved base scenario, the grid, the points and a hash
    DIR/runs/<point>-seed<k>/        a run folder (as asgd-sim run writes) plus result.json
    DIR/runs.parquet                 one row per run (asgd_sim.load_sweep reads it)

A run is written into a hidden ``runs/.<name>.partial-*`` folder, ``result.json`` last (the commit
marker: status, error, summary), then renamed into place. So a run folder is complete or absent:
after an interruption, kill -9 included, the same command runs exactly the missing runs. A run
that raises is committed with its error, and the sweep goes on. Runs execute in worker processes
started with "spawn" (JAX is not fork-safe), which exit when the sweep process dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import threading
import time
import tomllib
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ScenarioError
from ..scenario.files import scenario_changes, scenario_from_dict
from .sweep_plan import Point, Sweep, parse_grid, parse_tune, parse_variant, plan_sweep, split_top_level

__all__ = ["Sweep", "SweepOutcome", "plan_sweep", "run_sweep", "parse_grid", "parse_variant", "parse_tune", "split_top_level"]

MAX_ATTEMPTS = 3  # a run whose worker process dies this many times is recorded as failed


# ---------------------------------------------------------------------------------- running


@dataclass
class SweepOutcome:
    """What a call of `run_sweep` did."""

    out: Path
    total: int  # runs in the sweep (points x seeds)
    skipped: int  # already committed before this call
    ran: int  # run by this call
    failed: list[dict[str, Any]]  # result records (status "error") of every failed run in the sweep
    table: Path | None = None


def run_sweep(sweep: Sweep, out: str | Path, *, jobs: int = 1, retry_failed: bool = False,
              progress: Callable[[dict[str, Any]], None] | None = None, on_start: Callable[[int, int], None] | None = None,
              executor: str = "processes", ray_address: str | None = None, tensorboard: str | Path | None = None) -> SweepOutcome:
    """Run the runs of ``sweep`` not yet committed in ``out``; rebuild ``runs.parquet``.

    ``progress(record)`` is called as each run finishes; ``on_start(todo, total)`` once before.
    ``executor`` is "processes" (``jobs`` local processes) or "ray" (each run a Ray task, on a
    local Ray or the cluster at ``ray_address``; ``out`` must be on a filesystem the tasks see).
    ``tensorboard``: a folder for TensorBoard event files, one sub-folder per run (its run name).
    Refuses (ScenarioError) a folder that holds a different sweep, or one another process writes.
    """
    if executor not in ("processes", "ray"):
        raise ScenarioError("--executor", f"= {executor!r}: must be 'processes' or 'ray'")
    from ..results.load import build_runs_table, write_runs_table

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ScenarioError("--jobs", f"= {jobs!r}: must be an integer >= 1 (processes running at once)")
    out = Path(out)
    _check_folder(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        _check_same_sweep(sweep, out)
        _write_description(sweep, out)
        for leftover in runs_dir.glob(".*.partial-*"):  # runs a killed sweep left half written
            shutil.rmtree(leftover, ignore_errors=True)
        todo = []
        for point, candidate, seed, name in sweep.run_names():
            record = _committed(runs_dir / name)
            if record is not None and (record["status"] == "ok" or not retry_failed):
                continue
            if (runs_dir / name).exists():
                shutil.rmtree(runs_dir / name)  # a failed run to retry, or a folder without result.json
            todo.append(_task(sweep, point, candidate, seed, name, runs_dir))
            if tensorboard is not None:
                todo[-1]["tensorboard"] = str(Path(tensorboard) / name)
        total = len(sweep.run_names())
        if on_start:
            on_start(len(todo), total)
        if todo and executor == "ray":
            _execute_ray(todo, progress, ray_address)
        elif todo:
            _execute_all(todo, jobs, progress)
        table = write_runs_table(build_runs_table(out), out)
        failed = [r for *_, name in sweep.run_names() if (r := _committed(runs_dir / name)) is not None and r["status"] != "ok"]
        return SweepOutcome(out=out, total=total, skipped=total - len(todo), ran=len(todo), failed=failed, table=table)
    finally:
        lock.close()


def _lock(out: Path) -> Any:
    handle = (out / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        raise ScenarioError(str(out), f"another asgd-sim sweep is writing to this folder{f' (pid {owner})' if owner else ''}; "
                            "wait for it to finish, or use another --out folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _check_folder(out: Path) -> None:
    """A sweep writes into a new folder or its own: never into a run folder or other files."""
    if out.exists() and not out.is_dir():
        raise ScenarioError(str(out), "is a file; give --out a folder for the sweep")
    if not out.is_dir() or (out / "sweep.json").is_file():
        return
    found = sorted(p.name for p in out.iterdir() if p.name != ".lock" and not (p.name == "runs" and p.is_dir() and not any(p.iterdir())))
    if found:
        what = "a run folder (summary.json)" if "summary.json" in found else f"{len(found)} other entries ({', '.join(found[:3])})"
        raise ScenarioError(str(out), f"is not a sweep folder: it holds {what} and no sweep.json; give --out a new folder, e.g. {out}-sweep")


def _check_same_sweep(sweep: Sweep, out: Path) -> None:
    """Refuse to mix results of different experiments in one folder, and say what differs."""
    path = out / "sweep.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    if old.get("hash") == sweep.digest:
        return
    new = sweep.description()
    changes = []
    if old.get("base_scenario") != new["base_scenario"]:
        changes.append("the scenario changed (" + _diff_scenarios(old.get("base_scenario", ""), new["base_scenario"]) + ")")
    if old.get("grid") != new["grid"] or old.get("variants") != new["variants"] or old.get("tune") != new.get("tune"):
        changes.append(f"the grid changed (was {_grid_text(old)}; now {_grid_text(new)})")
    if bool(old.get("timing_only")) != sweep.timing_only:
        changes.append("it ran " + ("with" if old.get("timing_only") else "without") + " --timing-only")
    what = "; ".join(changes) or "it was written by another version of asgd-sim"
    raise ScenarioError(str(out), f"holds a different sweep: {what}. Results of different sweeps are never mixed: "
                        "use another --out folder (or delete this one to start over)")


def _grid_text(desc: dict[str, Any]) -> str:
    parts = [f"--variant {v['label']}:{';'.join(v['set'])}" for v in desc.get("variants", [])]
    parts += [f"--grid {g['key']}={','.join(g['values'])}" for g in desc.get("grid", [])]
    parts += [f"--tune {g['key']}={','.join(g['values'])}" for g in desc.get("tune", [])]
    return " ".join(parts) or "no grid"


def _diff_scenarios(old_text: str, new_text: str) -> str:
    try:
        keys = scenario_changes(old_text, new_text)
    except tomllib.TOMLDecodeError:
        return "resolved scenario differs"
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _write_description(sweep: Sweep, out: Path) -> None:
    from ..results.folder import write_json

    path = out / "sweep.json"
    desc = sweep.description()
    now = datetime.now().isoformat(timespec="seconds")
    if path.is_file():
        old = json.loads(path.read_text())
        desc["seeds"] = max(int(old.get("seeds", 1)), sweep.seeds)  # a rerun may add seeds; never forget runs
        desc["created"] = old.get("created", now)
    else:
        desc["created"] = now
    desc["updated"] = now
    write_json(path, desc)


def _committed(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _task(sweep: Sweep, point: Point, candidate: Point | None, seed: int, name: str, runs_dir: Path) -> dict[str, Any]:
    scenario = json.loads(json.dumps(point.scenario if candidate is None else sweep.tuned[(point.id, candidate.id)]))
    scenario.setdefault("run", {})["seed"] = seed
    tuned = list(candidate.overrides) if candidate is not None else []
    task = {"runs_dir": str(runs_dir), "run": name, "point": point.id, "label": point.label, "values": point.values,
            "set": [*sweep.base_overrides, *point.overrides, *tuned, f"run.seed={seed}"], "seed": seed, "scenario": scenario,
            "name": sweep.name, "timing_only": sweep.timing_only, "sweep_hash": sweep.digest, "attempts": 0}
    if candidate is not None:
        task["tune"] = {"index": int(candidate.id[1:]), "label": candidate.label, "values": candidate.values}
    return task


def _execute_all(todo: list[dict[str, Any]], jobs: int, progress: Callable[[dict[str, Any]], None] | None) -> None:
    """Run tasks in spawned worker processes; a dead worker's runs are retried, then recorded as failed."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    pending = list(todo)
    while pending:
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=context,
                                   initializer=_worker_init, initargs=(os.getpid(),))
        retry: list[dict[str, Any]] = []
        try:
            futures = {pool.submit(_run_one, task): task for task in pending}
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in done:
                    task = futures[future]
                    try:
                        record = future.result()
                    except BrokenProcessPool:
                        task["attempts"] += 1
                        if task["attempts"] < MAX_ATTEMPTS:
                            retry.append(task)
                            continue
                        record = _commit_failure(task, "the worker process running it died (killed, or out of memory?) "
                                                 f"{MAX_ATTEMPTS} times")
                    except Exception as error:  # the run could not even be sent to a worker
                        record = _commit_failure(task, f"{type(error).__name__}: {error}")
                    if progress:
                        progress(record)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        pending = retry


def _execute_ray(todo: list[dict[str, Any]], progress: Callable[[dict[str, Any]], None] | None, address: str | None) -> None:
    """Each run as a Ray task (one CPU each, spread over the cluster's nodes). A task whose process
    dies (killed, out of memory, its node lost) is retried by Ray on a living node, up to
    MAX_ATTEMPTS runs in all, then committed as failed (``--retry-failed`` runs it again)."""
    from ..backends.ray_backend import ensure_ray

    ray = ensure_ray(address)
    remote_run = ray.remote(num_cpus=1, max_retries=MAX_ATTEMPTS - 1, scheduling_strategy="SPREAD")(_run_on_ray_node)
    pending = {remote_run.remote(task): task for task in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            task = pending.pop(ref)
            try:
                record = ray.get(ref)
            except Exception as error:  # the task's process died MAX_ATTEMPTS times, or Ray failed it
                why = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
                record = _commit_failure(task, f"{type(error).__name__}: the Ray task running it died {MAX_ATTEMPTS} times "
                                         f"(killed, out of memory, or its node lost?): {why}")
            if progress:
                progress(record)


def _run_on_ray_node(task: dict[str, Any]) -> dict[str, Any]:
    """`_run_one` in a Ray task; its record names the Ray node that ran it (``ray_node``)."""
    import ray

    return _run_one({**task, "ray_node": ray.get_runtime_context().get_node_id()})


def _worker_init(parent: int) -> None:
    """In each worker: exit as soon as the sweep process is gone (kill -9 leaves no orphans)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="asgd-sim-parent-watch").start()


def _record(task: dict[str, Any]) -> dict[str, Any]:
    keys = ("run", "point", "label", "values", "seed", "set", "sweep_hash", "timing_only", "tune", "ray_node")
    return {key: task[key] for key in keys if key in task}


def _commit(task: dict[str, Any], partial: Path, record: dict[str, Any]) -> dict[str, Any]:
    """result.json last, then the atomic rename that makes the run exist."""
    from ..results.folder import write_json

    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / "result.json", record)
    final = Path(task["runs_dir"]) / task["run"]
    try:
        partial.rename(final)
    except OSError:  # committed meanwhile by another process (an orphan of a killed sweep, a task Ray
        shutil.rmtree(partial, ignore_errors=True)  # retried after it committed): keep that one
        return _committed(final) or record
    return record


def _commit_failure(task: dict[str, Any], error: str) -> dict[str, Any]:
    partial = Path(task["runs_dir"]) / f".{task['run']}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return _commit(task, partial, {**_record(task), "status": "error", "error": error, "summary": None, "wall_s": 0.0})


def _run_one(task: dict[str, Any]) -> dict[str, Any]:
    """One run, in a worker process: simulate, write the run folder, commit result.json."""
    partial = Path(task["runs_dir"]) / f".{task['run']}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    record = _record(task)
    try:
        scenario = scenario_from_dict(task["scenario"], name=task["name"])
        from ..runner import run_scenario

        callbacks = []
        if task.get("tensorboard"):  # a retried run starts its events afresh
            from ..results.tensorboard import TensorBoardLogger

            shutil.rmtree(task["tensorboard"], ignore_errors=True)
            callbacks.append(TensorBoardLogger(task["tensorboard"]))
        try:
            result = run_scenario(scenario, partial, timing_only=task["timing_only"], callbacks=callbacks)
        finally:
            for logger in callbacks:
                logger.close()
        record.update(status="ok", error=None, summary=result.summary)
    except Exception as error:  # recorded, and the sweep goes on
        record.update(status="error", error=f"{type(error).__name__}: {error}", summary=None, traceback=traceback.format_exc())
    record["wall_s"] = round(time.perf_counter() - started, 3)
    record["finished"] = datetime.now().isoformat(timespec="seconds")
    return _commit(task, partial, record)


def main_progress(total: int, quiet: bool) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """A tqdm bar over runs on a terminal; off a terminal one line per finished run (unless quiet)."""
    failed = 0
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="run", dynamic_ncols=True, leave=False)

        def update(record: dict[str, Any]) -> None:
            nonlocal failed
            failed += record["status"] != "ok"
            bar.update(1)
            bar.set_postfix_str(f"failed={failed}" if failed else record["run"], refresh=True)
            if record["status"] != "ok":
                bar.write(f"run {record['run']} failed: {record['error']}", file=sys.stderr)

        return update, bar.close
    done = 0

    def log(record: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        if record["status"] != "ok":
            print(f"[{done}/{total}] {record['run']} ({record['label']}) FAILED: {record['error']}", file=sys.stderr, flush=True)
        elif not quiet:
            print(f"[{done}/{total}] {record['run']} ({record['label']}) ok, {record['wall_s']:.3g} s", file=sys.stderr, flush=True)

    return log, lambda: None
