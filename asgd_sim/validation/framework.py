"""``asgd-sim validate``: does the simulator reproduce the theory of THEORY.md?

Each check (C1 ... C12) builds real scenarios, runs them through the timing engine
(``simulate_timing``) or the whole simulator (``simulate``), and compares what they measure with
the closed form in ``asgd_sim.theory``, recomputed for the check's parameters. A check is a plain
function ``check(params, rec)`` registered with its default parameters (THEORY.md sizes, and
smaller ones for ``--quick``); it reports rows through ``rec.add(...)`` and data for the report's
figures through ``rec.figure(...)``. The checks live in `asgd_sim.validate_checks`, the report in
`asgd_sim.validate_report`.

A row passes when the simulated value is within the tolerance of the prediction. The tolerance
says what it is: ``rel`` (|sim - pred| <= tol |pred|), ``abs`` (|sim - pred| <= tol), ``max``
(sim <= pred: the prediction is an upper bound) or ``min`` (sim >= pred: a lower bound). An
``info`` row is reported without a verdict (THEORY.md asks for some results to be "reported
only", e.g. C6's ordering on an MLP): it prints INFO and never fails the run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ScenarioError
from ..errors import closest

__all__ = ["CheckResult", "CheckOutcome", "Check", "Recorder", "checks", "select", "resolve_params", "run_checks",
           "verdict", "format_row", "table_header", "run_cli", "KINDS", "OMITTED"]

KINDS = ("rel", "abs", "max", "min", "info")
# Checks of THEORY.md that `validate` does not run, and why (shown by --only and in the report).
OMITTED: dict[str, str] = {}

Params = dict[str, Any]


@dataclass
class CheckResult:
    """One line of the table: a predicted and a simulated value and the verdict."""

    check: str  # "C12"
    quantity: str  # what is compared, e.g. "lock throughput X, M=5"
    predicted: Any  # a float (or bool/int) from asgd_sim.theory, for these parameters
    simulated: Any  # what the real runs measured
    tolerance: float  # see `kind`
    kind: str  # rel | abs | max | min | info
    passed: bool
    seconds: float  # wall time spent on this row (since the check's previous row)
    note: str = ""  # extra context for the report (e.g. an ordering)


@dataclass
class CheckOutcome:
    name: str
    title: str
    params: Params
    rows: list[CheckResult]
    figures: dict[str, Any]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)


def verdict(predicted: Any, simulated: Any, tolerance: float, kind: str) -> bool:
    """Whether ``simulated`` is within ``tolerance`` of ``predicted`` (see the module docstring)."""
    if kind == "info":
        return True
    try:
        p, s = float(predicted), float(simulated)
    except (TypeError, ValueError):
        return bool(predicted == simulated)
    if math.isnan(s) or math.isnan(p):
        return False
    if kind == "rel":
        return abs(s - p) <= tolerance * abs(p)
    if kind == "abs":
        return abs(s - p) <= tolerance
    if kind == "max":
        return s <= p
    if kind == "min":
        return s >= p
    raise ValueError(f"kind = {kind!r}: must be one of {', '.join(KINDS)}")


class Recorder:
    """Collects a check's rows (timing each since the previous one) and its figure data."""

    def __init__(self, check: str, on_row: Callable[[CheckResult], None] | None = None) -> None:
        self.check = check
        self.rows: list[CheckResult] = []
        self.figures: dict[str, Any] = {}
        self._on_row = on_row
        self._lap = time.perf_counter()

    def add(self, quantity: str, predicted: Any, simulated: Any, tolerance: float = 0.0, kind: str = "rel",
            note: str = "") -> CheckResult:
        now = time.perf_counter()
        row = CheckResult(self.check, quantity, _plain(predicted), _plain(simulated), float(tolerance), kind,
                          verdict(predicted, simulated, tolerance, kind), now - self._lap, note)
        self._lap = now
        self.rows.append(row)
        if self._on_row is not None:
            self._on_row(row)
        return row

    def figure(self, key: str, data: Any) -> None:
        self.figures[key] = data


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones (for JSON and printing)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


# --- the registry ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """A registered check: its function and its default parameters (full, and --quick changes)."""

    name: str
    title: str
    run: Callable[[Params, Recorder], None]
    full: Params
    quick: Params = field(default_factory=dict)
    limits: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (minimum, why)

    def defaults(self, quick: bool) -> Params:
        return {**self.full, **(self.quick if quick else {})}


_REGISTRY: dict[str, Check] = {}


def register(name: str, title: str, *, full: Params, quick: Params | None = None,
             limits: dict[str, tuple[float, str]] | None = None) -> Callable:
    """Decorator: add ``check(params, rec)`` to the registry under ``name``."""

    def wrap(fn: Callable[[Params, Recorder], None]) -> Callable[[Params, Recorder], None]:
        unknown = set(quick or {}) - set(full)
        assert not unknown, f"{name}: quick parameters {unknown} have no full default"
        _REGISTRY[name] = Check(name, title, fn, dict(full), dict(quick or {}), dict(limits or {}))
        return fn

    return wrap


def checks() -> dict[str, Check]:
    """All registered checks, in THEORY.md order (imports the check module on first use)."""
    from . import checks  # noqa: F401  (registers the checks)

    return dict(sorted(_REGISTRY.items(), key=lambda item: int(item[0][1:])))


def select(only: str | None) -> list[Check]:
    """The checks named in ``--only`` (comma-separated, any case), or all."""
    registry = checks()
    if not only:
        return list(registry.values())
    chosen: list[Check] = []
    for raw in only.split(","):
        name = raw.strip().upper()
        if not name:
            continue
        if name in OMITTED:
            raise ScenarioError("--only", f"{name} is {OMITTED[name]}")
        if name not in registry:
            hint = closest(name, registry)
            raise ScenarioError("--only", f"unknown check {raw.strip()!r}" + (f"; did you mean {hint!r}?" if hint else "")
                                + f" (checks: {', '.join(registry)})")
        if registry[name] not in chosen:
            chosen.append(registry[name])
    if not chosen:
        raise ScenarioError("--only", "names no check; give e.g. --only C4,C12")
    return chosen


# --- parameters: defaults, --set overrides, types ----------------------------------------------

def _parse(check: Check, key: str, text: str, default: Any) -> Any:
    where = f"{check.name}.{key}"
    text = text.strip()

    def scalar(kind: type, item: str) -> Any:
        item = item.strip()
        if kind is bool:
            if item.lower() in ("true", "yes", "1", "on"):
                return True
            if item.lower() in ("false", "no", "0", "off"):
                return False
            raise ScenarioError(where, f"= {item!r}: must be true or false")
        if kind is int:
            try:
                return int(item)
            except ValueError:
                raise ScenarioError(where, f"= {item!r}: must be a whole number (default {_show(default)})") from None
        if kind is float:
            try:
                value = float(item)
            except ValueError:
                raise ScenarioError(where, f"= {item!r}: must be a number (default {_show(default)})") from None
            if not math.isfinite(value):
                raise ScenarioError(where, f"= {item!r}: must be finite")
            return value
        return item

    if isinstance(default, tuple):
        kind = type(default[0]) if default else float
        items = [item for item in text.strip("[]()").split(",") if item.strip()]
        if not items:
            raise ScenarioError(where, f"= {text!r}: give one or more values separated by commas, e.g. {_show(default)}")
        return tuple(scalar(kind, item) for item in items)
    return scalar(type(default), text)


def _show(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _check_limits(check: Check, params: Params) -> None:
    for key, (minimum, why) in check.limits.items():
        values = params[key] if isinstance(params[key], tuple) else (params[key],)
        for value in values:
            if value < minimum:
                raise ScenarioError(f"{check.name}.{key}", f"= {_show(params[key])}: must be >= {minimum:g} ({why})")


def resolve_params(selected: Sequence[Check], quick: bool, sets: Iterable[str]) -> dict[str, Params]:
    """Each selected check's parameters: its defaults, then ``--set name=value`` (or C12.name=value).

    An unqualified name applies to every selected check that has it; a name no selected check has
    is an error naming their parameters (with a did-you-mean).
    """
    params = {c.name: c.defaults(quick) for c in selected}
    by_name = {c.name: c for c in selected}
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError("--set", f"{item!r}: must be name=value, e.g. --set workers=32 or --set C12.workers=32")
        target, _, name = key.rpartition(".")
        if target:
            target = target.upper()
            if target not in by_name:
                raise ScenarioError("--set", f"{item!r}: check {target} is not selected"
                                    + (f" (selected: {', '.join(by_name)})" if by_name else ""))
            owners = [by_name[target]] if name in params[target] else []
        else:
            owners = [c for c in selected if name in params[c.name]]
        if not owners:
            pool = [by_name[target]] if target else list(selected)
            known = sorted({p for c in pool for p in params[c.name]})
            hint = closest(name, known)
            listing = "; ".join(f"{c.name}: {', '.join(params[c.name])}" for c in pool)
            raise ScenarioError("--set", f"unknown parameter {name!r} in {item!r}" + (f"; did you mean {hint!r}?" if hint else "")
                                + f" (parameters of {listing})")
        for check in owners:
            params[check.name][name] = _parse(check, name, value, check.full[name])
    for check in selected:
        _check_limits(check, params[check.name])
    return params


# --- running ----------------------------------------------------------------------------------

def run_checks(selected: Sequence[Check], params: dict[str, Params],
               on_row: Callable[[CheckResult], None] | None = None) -> list[CheckOutcome]:
    """Run each check with its parameters; ``on_row`` sees every row as it is produced."""
    outcomes = []
    for check in selected:
        rec = Recorder(check.name, on_row)
        started = time.perf_counter()
        try:
            check.run(dict(params[check.name]), rec)
        except ValueError as error:
            if isinstance(error, ScenarioError):
                raise
            # A theory formula refused the parameters (e.g. K > P): a bad argument, not a failure.
            raise ScenarioError(check.name, f"{error} (check the --set values; defaults: "
                                f"{', '.join(f'{k}={_show(v)}' for k, v in check.full.items())})") from None
        outcomes.append(CheckOutcome(check.name, check.title, params[check.name], rec.rows, rec.figures,
                                     time.perf_counter() - started))
    return outcomes


# --- the printed table -------------------------------------------------------------------------

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


def list_checks(quick: bool) -> str:
    lines = []
    for check in checks().values():
        lines.append(f"{check.name:4} {check.title}")
        for key, value in check.defaults(quick).items():
            lines.append(f"       {key} = {_show(value)}")
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

    from .report import write_report

    write_report(outcomes, out, quick=quick, seconds=total)
    print("-" * len(table_header().splitlines()[0]), file=stream)
    checked = [row for row in rows if row.kind != "info"]
    print(f"{len(checked) - len(failed)}/{len(checked)} passed in {total:.1f} s"
          + (f"; FAILED: {', '.join(sorted({r.check for r in failed}, key=lambda n: int(n[1:])))}" if failed else ""), file=stream)
    print(f"report     {out / 'validation.html'} (and validation.md, validation.json)", file=stream)
    return 1 if failed else 0


def outcome_dict(outcome: CheckOutcome) -> dict[str, Any]:
    """An outcome as plain data (for validation.json)."""
    return {"name": outcome.name, "title": outcome.title, "params": {k: list(v) if isinstance(v, tuple) else v
                                                                     for k, v in outcome.params.items()},
            "passed": outcome.passed, "seconds": outcome.seconds, "rows": [asdict(r) for r in outcome.rows],
            "figures": outcome.figures}
