"""The ``asgd-sim`` command line.

Every user error (bad scenario, bad override, missing file) prints one ``error:`` line naming the
key, the bad value, the rule and a fix, and exits with status 2: never a traceback.
"""

from __future__ import annotations

import argparse
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
    run.set_defaults(handler=_cmd_run)

    rep = sub.add_parser("replay", help="re-run the numerics on a saved run's schedule (e.g. another update rule)")
    rep.add_argument("run_dir", type=Path, help="a results folder written by asgd-sim run")
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="change a numerics key, e.g. --set optimizer.staleness_rule=inverse")
    rep.add_argument("--out", type=Path, help="results folder (default: <run_dir>-replay-<timestamp>)")
    rep.add_argument("--quiet", action="store_true")
    rep.set_defaults(handler=_cmd_replay)
    return parser


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    stale = summary["staleness"]
    lines = [
        f"scenario   {summary['scenario']} ({summary['algorithm']}, {summary['workers']} workers)",
        f"stopped    {summary['stopped']} after {summary['updates']} updates, {summary['sim_time']:.4g} s simulated, {summary['wall_time_s']:.3g} s wall",
        f"throughput {summary['updates_per_s']:.4g} updates/s, {summary['gradients_per_s']:.4g} gradients/s (simulated)",
        f"staleness  mean {stale['mean']:.3g}, p50 {stale['p50']:.3g}, p95 {stale['p95']:.3g}, max {stale['max']}",
        f"lock wait  mean {summary['lock_wait_mean']:.3g} s",
    ]
    if "final_loss" in summary:
        acc = summary.get("final_accuracy")
        lines.append(f"learning   final loss {summary['final_loss']:.4g}" + (f", accuracy {acc:.4f}" if acc is not None else "")
                     + (f", time to target {summary['time_to_target']:.4g} s" if summary.get("time_to_target") is not None else "")
                     + (" (DIVERGED)" if summary.get("diverged") else ""))
    if summary.get("deadlock"):
        lines.append("deadlock   " + "; ".join(summary["deadlock"]))
    lines.append(f"results    {out}")
    print("\n".join(lines))


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import default_out_dir, run_timing
    from .scenario import load_scenario

    scenario = load_scenario(args.scenario, args.overrides)
    out = args.out or default_out_dir(scenario)
    if args.timing_only:
        _, summary = run_timing(scenario, out, show_progress=not args.quiet)
    else:
        from .simulate import run_simulation

        _, summary = run_simulation(scenario, out, show_progress=not args.quiet)
    if not args.quiet:
        _print_summary(summary, out)
    return 1 if summary["stopped"] == "deadlock" else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from datetime import datetime

    from .simulate import replay, write_result

    result = replay(args.run_dir, args.overrides)
    out = args.out or args.run_dir.with_name(f"{args.run_dir.name}-replay-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    write_result(result, out)
    if not args.quiet:
        _print_summary(result.summary, out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
