"""How ``asgd-sim validate`` writes a result: the printed table and the cells the report reuses.

One row per comparison (`framework.CheckResult`): check, quantity, predicted, simulated,
tolerance, result (PASS, FAIL or INFO) and the wall time spent on it.
"""

from __future__ import annotations

import math
from typing import Any

from .framework import CheckResult

__all__ = ["fmt_value", "fmt_tolerance", "fmt_result", "table_header", "format_row"]

_COLUMNS = (("check", 5), ("quantity", 46), ("predicted", 11), ("simulated", 11), ("tolerance", 11), ("result", 6),
            ("time", 7))


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0.0:
            return "0"
        return f"{value:.5g}" if 1e-3 <= abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def fmt_tolerance(tolerance: float, kind: str) -> str:
    if kind == "rel":
        return f"rel {tolerance * 100:g}%"
    if kind == "abs":
        return "exact" if tolerance == 0 else f"abs {tolerance:g}"
    return {"max": "<= bound", "min": ">= bound", "info": "report only"}[kind]


def fmt_result(row: CheckResult) -> str:
    return "INFO" if row.kind == "info" else "PASS" if row.passed else "FAIL"


def table_header() -> str:
    line = " ".join(name.ljust(width) if i < 2 else name.rjust(width) for i, (name, width) in enumerate(_COLUMNS))
    return line.rstrip() + "\n" + "-" * len(line)


def format_row(row: CheckResult) -> str:
    cells = (row.check, _clip(row.quantity, _COLUMNS[1][1]), fmt_value(row.predicted), fmt_value(row.simulated),
             fmt_tolerance(row.tolerance, row.kind), fmt_result(row), f"{row.seconds:.1f}s")
    return " ".join(cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, (_, width)) in enumerate(zip(cells, _COLUMNS)))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"
