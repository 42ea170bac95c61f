"""The ``asgd-sim validate`` command: list the checks, or run them, print the table, write the report.

It chooses checks from `catalog`, resolves and runs them with `framework`, prints each row as it
is produced (`format`) and writes validation.html/md/json (`report`). Bad arguments raise
`ScenarioError` (the CLI prints ``error: ...`` and exits 2) before anything runs or is written.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .catalog import checks, select
from .format import format_row, table_header
from .framework import OMITTED, resolve_params, run_checks, show

__all__ = ["run_cli", "list_checks"]


def list_checks(quick: bool) -> str:
    """``validate --list``: each check's title and default parameters (the --quick ones with ``quick``)."""
    lines = []
    for check in checks().values():
        lines.append(f"{check.name:4} {check.title}")
        for key, value in check.defaults(quick).items():
            lines.append(f"       {key} = {show(value)}")
    for name, why in OMITTED.items():
        lines.append(f"{name:4} {why}")
    return "\n".join(lines)


def run_cli(only: str | None, quick: bool, out: Path | None, sets: Sequence[str], list_only: bool = False,
            stream: Any = None) -> int:
    """What ``asgd-sim validate`` does; returns the exit status (0 all pass, 1 some fail)."""
    stream = stream or sys.stdout
    if list_only:
        print(list_checks(quick), file=stream)
        return 0
    selected = select(only)
    params = resolve_params(selected, quick, sets)
    if out is None:
        from datetime import datetime

        out = Path("results") / f"validation-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    print(f"asgd-sim validate ({'quick' if quick else 'full'}): {', '.join(c.name for c in selected)}", file=stream)
    print(table_header(), file=stream, flush=True)
    started = time.perf_counter()
    outcomes = run_checks(selected, params, on_row=lambda row: print(format_row(row), file=stream, flush=True))
    total = time.perf_counter() - started
    rows = [row for o in outcomes for row in o.rows]
    failed = [row for row in rows if not row.passed]

    from .report import write_report  # matplotlib: only when there is a report to write

    write_report(outcomes, out, quick=quick, seconds=total)
    print("-" * len(table_header().splitlines()[0]), file=stream)
    checked = [row for row in rows if row.kind != "info"]
    print(f"{len(checked) - len(failed)}/{len(checked)} passed in {total:.1f} s"
          + (f"; FAILED: {', '.join(sorted({r.check for r in failed}, key=lambda n: int(n[1:])))}" if failed else ""), file=stream)
    print(f"report     {out / 'validation.html'} (and validation.md, validation.json)", file=stream)
    return 1 if failed else 0
