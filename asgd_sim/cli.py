"""The ``asgd-sim`` command line.

Every user error (bad scenario, bad override, missing file) prints one ``error:`` line naming the
key, the bad value, the rule and a fix, and exits with status 2: never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ScenarioError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asgd-sim", description="Simulate and run asynchronous parallel SGD.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="simulate a scenario and write a results folder")
    run.add_argument("scenario", help="scenario TOML file (see scenarios/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key, e.g. --set server.lock=global --set workers[0].count=16")
    run.add_argument("--out", type=Path, help="results folder (default: results/<scenario>-<timestamp>)")
    run.add_argument("--timing-only", action="store_true", help="simulate the schedule only: no JAX gradients")
    run.add_argument("--quiet", action="store_true", help="no progress bar, no printed summary")
    run.add_argument("--backend", choices=("sim", "devices", "ray"), default="sim",
                     help="sim: simulate (default); devices: run for real, a thread per JAX device; ray: Ray actors")
    run.add_argument("--emulate", action="store_true",
                     help="real backends: inject the scenario's compute times, slowdowns, latencies and apply times as real delays")
    run.add_argument("--ray-address", metavar="ADDR", help="ray backend: an existing Ray cluster (default: start a local one)")
    run.add_argument("--resume", action="store_true",
                     help="real backends: continue the run in --out from its last checkpoint (server.checkpoint_every)")
    run.add_argument("--tensorboard", type=Path, metavar="DIR",
                     help="also write TensorBoard event files of every evaluation to DIR (pip install 'asgd-sim[tensorboard]')")
    run.set_defaults(handler=_cmd_run)

    rep = sub.add_parser("replay", help="re-run the numerics on a saved run's schedule (e.g. another update rule)")
    rep.add_argument("run_dir", type=Path, help="a results folder written by asgd-sim run")
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="change a numerics key, e.g. --set optimizer.staleness_rule=inverse")
    rep.add_argument("--out", type=Path, help="results folder (default: <run_dir>-replay-<timestamp>); never overwritten without --force")
    rep.add_argument("--force", action="store_true", help="replace an existing --out run folder")
    rep.add_argument("--quiet", action="store_true")
    rep.set_defaults(handler=_cmd_replay)

    cal = sub.add_parser("calibrate", help="fit a scenario's timing (compute, latency, apply time) to a real run's trace")
    cal.add_argument("run_dir", type=Path, help="a results folder of a real run (asgd-sim run --backend devices|ray)")
    cal.add_argument("--out", type=Path, required=True, help="the calibrated scenario file to write (.toml)")
    cal.add_argument("--devices", choices=("auto", "always", "none"), default="auto",
                     help="the device model (workers sharing a device): kept when its AIC is lower (auto), always, or never")
    cal.add_argument("--quiet", action="store_true")
    cal.set_defaults(handler=_cmd_calibrate)

    fid = sub.add_parser("fidelity", help="simulate a real run's calibrated scenario and compare it with the real run")
    fid.add_argument("run_dir", type=Path, help="a results folder of a real run")
    fid.add_argument("--seeds", type=int, default=5, help="simulated seeds (the band the real run is compared with)")
    fid.add_argument("--timing-only", action="store_true", help="compare timing only (no loss curves)")
    fid.add_argument("--quiet", action="store_true")
    fid.set_defaults(handler=_cmd_fidelity)

    val = sub.add_parser("validate", help="check the simulator against docs/THEORY.md (C1-C17): predicted vs simulated")
    val.add_argument("--only", metavar="C4,C12", help="run only these checks (default: all)")
    val.add_argument("--quick", action="store_true", help="smaller sizes: all checks in about a minute")
    val.add_argument("--out", type=Path, help="report folder (default: results/validation-<timestamp>)")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                     help="a check parameter, e.g. --set workers=32 or --set C12.workers=2,5 (see --list)")
    val.add_argument("--list", action="store_true", help="list the checks and their parameters, run nothing")
    val.set_defaults(handler=_cmd_validate)

    sch = sub.add_parser("schema", help="print the JSON Schema of scenario files (for TOML editors: completion and checks)")
    sch.add_argument("--out", type=Path, help="write it to this file instead of printing it")
    sch.set_defaults(handler=_cmd_schema)
    _add_study_commands(sub)
    _add_timeline_command(sub)
    return parser


def _add_timeline_command(sub: Any) -> None:
    tl = sub.add_parser("timeline", help="write a Perfetto timeline of any window of a run, or all of it, from its trace")
    tl.add_argument("run_dir", type=Path, help="a results folder written by asgd-sim run")
    tl.add_argument("--all", action="store_true",
                    help="every gradient and update (a run folder's timeline.json holds 100,000 of the two together)")
    tl.add_argument("--start", type=float, metavar="SECONDS", help="gradients pulled from this simulated time on")
    tl.add_argument("--end", type=float, metavar="SECONDS", help="gradients pulled before this simulated time")
    tl.add_argument("--limit", type=int, default=None, metavar="N",
                    help="at most N gradients and update rows together, the earliest in the window (default: 100,000; --all: "
                    "no limit)")
    tl.add_argument("--out", type=Path, help="the file to write (default: RUN_DIR/timeline-all.json or timeline-<start>-<end>s.json)")
    tl.set_defaults(handler=_cmd_timeline)


def _cmd_timeline(args: argparse.Namespace) -> int:
    import time

    from .results.load import is_run_dir
    from .results.timeline import DEFAULT_LIMIT, write_timeline
    from .trace import Trace

    if not is_run_dir(args.run_dir) or not (args.run_dir / "gradients.parquet").exists():
        raise ScenarioError("run_dir", f"= {args.run_dir}: not a run folder (no summary.json and gradients.parquet); give a "
                            "folder written by asgd-sim run")
    if args.all and args.limit is not None:
        raise ScenarioError("--limit", f"= {args.limit}: --all writes everything; drop one of the two")
    if args.limit is not None and args.limit < 1:
        raise ScenarioError("--limit", f"= {args.limit}: must be >= 1; or use --all for no limit")
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise ScenarioError("--end", f"= {args.end:g}: the window [--start, --end) must end after it starts ({args.start:g} s)")
    limit = None if args.all else (args.limit or DEFAULT_LIMIT)
    first, last = "start" if args.start is None else f"{args.start:g}", "end" if args.end is None else f"{args.end:g}"
    window = "all" if args.all and args.start is None and args.end is None else f"{first}-{last}s"
    out = args.out or args.run_dir / f"timeline-{window}.json"
    started = time.perf_counter()
    info = write_timeline(Trace.load(args.run_dir), out, limit, start=args.start, end=args.end)
    end = info["window_s"][1]
    print(f"timeline   {out}: {info['gradients_shown']:,} of {info['gradients_total']:,} gradients (pulled in "
          f"[{first}, {'end' if end is None else f'{end:.6g}'}) s), {info['update_rows_shown']:,} update rows, "
          f"{info['flows']:,} flows, {info['events']:,} events, {out.stat().st_size / 2**20:.1f} MB in {time.perf_counter() - started:.2g} s")
    print("open       ui.perfetto.dev (Open trace file) or chrome://tracing")
    return 0


def _print_summary(summary: dict[str, Any], out: Path, timeline: dict[str, Any] | None = None) -> None:
    clock = "measured" if summary.get("backend") else "simulated"  # a real backend's clock is real
    stale = summary["staleness"]
    replayed = summary.get("replay")
    lines = [f"replay     {replayed['of']}: its saved schedule ({replayed['updates']} updates) with "
             + ("; ".join(replayed["changed"]) if replayed["changed"] else "nothing changed (the run's own numbers again)")] if replayed else []
    lines += [
        f"scenario   {summary['scenario']} ({summary['algorithm']}, {summary['workers']} workers)",
        f"stopped    {summary['stopped']} after {summary['updates']} updates, {summary['sim_time']:.4g} s {clock}, {summary['wall_time_s']:.3g} s wall",
        f"throughput {summary['updates_per_s']:.4g} updates/s, {summary['gradients_per_s']:.4g} gradients/s ({clock})"
        + (f"; steady state {summary['steady_updates_per_s']:.4g} updates/s, {summary['steady_gradients_per_s']:.4g} gradients/s"
           if "steady_updates_per_s" in summary else ""),
        f"staleness  mean {stale['mean']:.3g}, p50 {stale['p50']:.3g}, p95 {stale['p95']:.3g}, max {stale['max']}",
        f"lock wait  mean {summary['lock_wait_mean']:.3g} s per push" + (
            f" ({summary['lock_wait_row_mean']:.3g} s per shard row)"
            if summary.get("lock_wait_row_mean", summary["lock_wait_mean"]) != summary["lock_wait_mean"] else ""),
    ]
    if "final_loss" in summary:
        acc, loss, at = summary.get("final_accuracy"), summary.get("final_loss"), summary.get("time_to_target")
        lines.append("learning   final loss " + (f"{loss:.4g}" if loss is not None else "-") + (f", accuracy {acc:.4f}" if acc is not None else "")
                     + (f", time to target {at:.4g} s (update {summary.get('updates_to_target')})" if at is not None else "")
                     + (" (DIVERGED)" if summary.get("diverged") else "")
                     + (" (STALLED: no progress over the last half of the run)" if summary.get("stalled") else ""))
    if summary.get("deadlock"):
        lines.append("deadlock   " + "; ".join(summary["deadlock"]))
    if timeline is not None and timeline["truncated"]:
        end = timeline["window_s"][1]
        lines.append(f"timeline   the first {timeline['gradients_shown']:,} of {timeline['gradients_total']:,} gradients"
                     + (f" (pulled before {end:.4g} s)" if end is not None else "") + f"; all of them: asgd-sim timeline {out} --all")
    lines.append(f"results    {out}")
    print("\n".join(lines))


def _cmd_run(args: argparse.Namespace) -> int:
    from .results.folder import default_out_dir
    from .runner import run_scenario
    from .scenario.files import load_scenario

    scenario = load_scenario(args.scenario, args.overrides)
    out = args.out or default_out_dir(scenario)
    options: dict[str, Any] = {}
    if args.backend != "sim" or args.resume or args.emulate:
        options = _real_run_options(args)
    logger = _tensorboard(args.tensorboard, args.timing_only)
    try:
        result = run_scenario(scenario, out, timing_only=args.timing_only, backend=args.backend, show_progress=not args.quiet,
                              callbacks=[logger] if logger else [], **options)
    finally:
        if logger:
            logger.close()
    if not args.quiet:
        from .results.timeline import timeline_extent

        _print_summary(result.summary, out, timeline_extent(result.trace))
        if logger:
            print(f"tensorboard {args.tensorboard} (view: tensorboard --logdir {args.tensorboard})")
        if args.backend != "sim":
            backend = result.summary["backend"]
            print(f"backend    {backend['name']}" + (" (emulated timing)" if backend.get("emulate") else "")
                  + (f", {len(backend['failures'])} worker failures" if backend.get("failures") else "")
                  + (f", resumed from update {backend['resumed_from']['updates']}" if backend.get("resumed_from") else ""))
            for r in backend.get("recoveries") or []:  # (Ray: the coordinator or a shard actor was lost)
                back = (f": back to the checkpoint at update {r['from_update']} ({r['updates'] - r['from_update']} updates dropped, "
                        f"{r['recovery_wall_s']:.3g} s to recover)") if "from_update" in r else ""
                print(f"recovered  lost {r['lost']} at update {r['updates']} (t = {r['t']:.4g} s){back}")
    if args.backend != "sim":
        return 0 if result.summary["stopped"] in ("until_updates", "until_time", "target_accuracy") else 1
    return 1 if result.summary["stopped"] == "deadlock" else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import shutil
    from datetime import datetime

    from .results.folder import write_run
    from .results.load import is_run_dir
    from .runner import replay

    out = args.out or args.run_dir.with_name(f"{args.run_dir.name}-replay-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and out.resolve() == args.run_dir.resolve():
        raise ScenarioError("--out", f"= {out}: is the run being replayed; give the replay its own folder")
    replace = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if replace and not args.force:
        raise ScenarioError("--out", f"= {out}: already exists; a replay never overwrites a folder: give another --out, "
                            "or add --force to replace that run folder")
    if replace and not is_run_dir(out):
        raise ScenarioError("--out", f"= {out}: holds files but is not a run folder (no summary.json); --force replaces run "
                            "folders only: give another --out")
    result = replay(args.run_dir, args.overrides)
    if replace:
        shutil.rmtree(out)
    write_run(result, out)
    if not args.quiet:
        _print_summary(result.summary, out)
    return 0


def _tensorboard(log_dir: Path | None, timing_only: bool) -> Any:
    """``--tensorboard DIR``: the logger of one run (None without the flag)."""
    if log_dir is None:
        return None
    if timing_only:
        raise ScenarioError("--tensorboard", "logs evaluations, and a --timing-only run takes none; drop one of them")
    from .results.tensorboard import TensorBoardLogger

    return TensorBoardLogger(log_dir)


def _real_run_options(args: argparse.Namespace) -> dict[str, Any]:
    """``run --backend devices|ray``: the real backend's options (flags that need one are refused without it)."""
    if args.backend == "sim" or args.timing_only:
        flag = "--timing-only" if args.timing_only and args.backend != "sim" else ("--resume" if args.resume else "--emulate")
        raise ScenarioError(flag, "applies to real runs only: add --backend devices or --backend ray" if args.backend == "sim"
                            else "a real run computes real gradients: drop --timing-only")
    if args.resume and args.out is None:
        raise ScenarioError("--resume", "needs --out RUN_DIR, the folder of the run to continue")
    options: dict[str, Any] = {"emulate": args.emulate, "resume": args.resume}
    if args.backend == "ray":
        options["address"] = args.ray_address
    elif args.ray_address:
        raise ScenarioError("--ray-address", "applies to --backend ray only")
    return options


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .studies.calibrate import calibrate_run

    scenario, report = calibrate_run(args.run_dir, args.out, args.devices)
    if not args.quiet:
        print(report)
        print(f"scenario   {args.out}")
    return 0


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from .studies.fidelity import fidelity

    report = fidelity(args.run_dir, seeds=args.seeds, numerics=not args.timing_only)
    if not args.quiet:
        print(report["table"])
        print(f"written    {args.run_dir / 'fidelity.json'}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    import json

    from .scenario.json_schema import scenario_json_schema

    text = json.dumps(scenario_json_schema(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"schema     {args.out} (first line of a scenario file: #:schema {args.out})")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validation.command import run_cli

    return run_cli(args.only, args.quick, args.out, args.overrides, list_only=args.list)


def _add_study_commands(sub: Any) -> None:
    """sweep, compare and report: what-if studies over many runs."""
    import os

    sw = sub.add_parser("sweep", help="run a scenario over a grid of overrides and seeds (parallel, resumable)",
                        description="Run SCENARIO at every point of the grid (the cartesian product of the --variant labels and "
                        "the --grid axes), each with seeds 0..N-1. Rerunning the same command resumes: only missing runs run.")
    sw.add_argument("scenario", help="scenario TOML file (see scenarios/)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="an axis of the grid, --set syntax, e.g. --grid server.lock=global,shard,none (repeatable)")
    sw.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[;KEY=VALUE...]",
                    help="a labelled set of overrides; the variants form one axis, e.g. --variant 'backup:algorithm.kind=sync;algorithm.backup=1'")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the base scenario for every run")
    sw.add_argument("--tune", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="run every point at each value and keep, per point, the best (time to target, else final loss), "
                    "e.g. --tune optimizer.learning_rate=0.01,0.03,0.1,0.3 or a log range --tune optimizer.learning_rate=log:0.001:1:7")
    sw.add_argument("--seeds", type=int, default=1, metavar="N", help="runs per point, with run.seed = 0..N-1 (default 1)")
    sw.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), metavar="J",
                    help="runs in parallel, each in its own process (default: half the CPU cores)")
    sw.add_argument("--out", type=Path, required=True, help="sweep folder (rerun the same command with it to resume)")
    sw.add_argument("--timing-only", action="store_true", help="simulate schedules only: no JAX gradients (timing questions)")
    sw.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    sw.add_argument("--quiet", action="store_true", help="no header, progress bar or per-run lines: only failures and the summary")
    sw.add_argument("--executor", choices=("processes", "ray"), default="processes",
                    help="run the points in local processes (default) or as Ray tasks (pip install 'asgd-sim[ray]')")
    sw.add_argument("--ray-address", metavar="ADDR", help="with --executor ray: an existing Ray cluster (default: a local Ray)")
    sw.add_argument("--tensorboard", type=Path, metavar="DIR",
                    help="TensorBoard event files of every run's evaluations, one sub-folder per run: DIR/<point>-seed<k>")
    sw.set_defaults(handler=_cmd_sweep)

    cmp = sub.add_parser("compare", help="overlay runs or sweep points (mean and 95%% band over seeds); a table with outcomes and the winner")
    cmp.add_argument("dirs", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR", help="run folders and sweep folders")
    cmp.add_argument("--metric", metavar="METRIC",
                     help="curve to overlay: test_accuracy, train_loss, staleness_mean, throughput or any metrics.csv column "
                     "(default: test_accuracy, or throughput for timing-only runs)")
    cmp.add_argument("--x", choices=("sim_time", "updates"), default="sim_time", help="x axis (default: sim_time)")
    cmp.add_argument("--logx", action="store_true", help="a log x axis for the curves")
    _add_target_options(cmp)
    cmp.add_argument("--tuned", choices=("best", "all"), default="best",
                     help="a sweep run with --tune: each point at its chosen value (best, default) or every value as a series (all)")
    cmp.add_argument("--out", type=Path, help="folder for compare.png and compare.csv (default: the first folder given)")
    cmp.set_defaults(handler=_cmd_compare)

    rpt = sub.add_parser("report", help="write report.html (self-contained, works offline) and report.md for a run or sweep folder")
    rpt.add_argument("dir", type=Path, metavar="DIR", help="a run folder or a sweep folder")
    _add_target_options(rpt)
    rpt.set_defaults(handler=_cmd_report)


def _add_target_options(parser: Any) -> None:
    parser.add_argument("--target", metavar="TARGET",
                        help="for the time-to-target column: a test accuracy (0.9) or METRIC<=VALUE / METRIC>=VALUE on any "
                        "metrics.csv column, e.g. train_loss<=0.1 (default: the scenario's run.target_accuracy)")
    parser.add_argument("--baseline", metavar="LABEL", help="add each series' paired difference to the series with this label")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .studies.sweep import main_progress, plan_sweep, run_sweep

    sweep = plan_sweep(args.scenario, args.grid, args.variant, seeds=args.seeds, overrides=args.overrides, timing_only=args.timing_only,
                       tune=args.tune)
    if args.tensorboard is not None:  # (refused before any run: --timing-only, or tensorboardX missing)
        if args.timing_only:
            raise ScenarioError("--tensorboard", "logs evaluations, and a --timing-only run takes none; drop one of them")
        from .results.tensorboard import TensorBoardLogger

        TensorBoardLogger.check_installed()
    state: dict[str, Any] = {}

    def on_start(todo: int, total: int) -> None:
        if not args.quiet:
            done = total - todo
            tuned = f" x {len(sweep.candidates)} tuned values" if sweep.candidates else ""
            print(f"sweep      {sweep.name}: {len(sweep.points)} points{tuned} x {sweep.seeds} seed{'' if sweep.seeds == 1 else 's'} = {total} runs"
                  + (f" ({done} already done, {todo} to run)" if done else "") + f", {min(args.jobs, max(todo, 1))} at a time",
                  file=sys.stderr, flush=True)
        state["progress"], state["close"] = main_progress(todo, args.quiet)

    try:
        outcome = run_sweep(sweep, args.out, jobs=args.jobs, retry_failed=args.retry_failed,
                            progress=lambda record: state["progress"](record), on_start=on_start,
                            executor=args.executor, ray_address=args.ray_address, tensorboard=args.tensorboard)
    finally:
        if "close" in state:
            state["close"]()
    # (--quiet drops the progress lines, never this summary)
    print(f"ran        {outcome.ran} runs ({outcome.skipped} were already done)")
    if sweep.candidates:
        from .results.load import load_sweep
        from .results.tuning import RULES, tuning_lines

        lines = tuning_lines(load_sweep(args.out))
        criterion = next((c for c in RULES if lines and f" by {c} [" in lines[0]), "")
        print(f"tuned      {', '.join(k for k, _ in sweep.tune)} per point" + (f" ({RULES[criterion]}; * chosen)" if criterion else ""))
        for line in lines:
            print(f"           {line}")
    print(f"results    {outcome.table} (one row per run: asgd_sim.load_sweep('{args.out}'))")
    print(f"next       asgd-sim compare {args.out}   |   asgd-sim report {args.out}")
    if args.tensorboard is not None:
        print(f"tensorboard {args.tensorboard}/<run> (view: tensorboard --logdir {args.tensorboard})")
    if outcome.failed:
        first = outcome.failed[0]
        print(f"error: {len(outcome.failed)} of {outcome.total} runs failed (first: {first['run']}: {first['error']}); each error is in "
              f"{args.out}/runs/<run>/result.json; fix the cause and rerun with --retry-failed", file=sys.stderr)
        return 1
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .studies.compare import compare, format_table

    comparison = compare(args.dirs, metric=args.metric, x=args.x, target=args.target, out=args.out, baseline=args.baseline,
                         logx=args.logx, tuned=args.tuned)
    print(format_table(comparison))
    print(f"figure     {comparison.figure}\ntable      {comparison.table_file}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .studies.report import write_report

    html_path, md_path = write_report(args.dir, target=args.target, baseline=args.baseline)
    print(f"report     {html_path} (self-contained: open it in a browser, works offline)\nmarkdown   {md_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A scenario may name user code as "package.module:name" (a model, an algorithm, an optimizer):
    # as with `python -m`, modules in the current folder import.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return int(args.handler(args))
    except ScenarioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
