"""The check framework of ``asgd-sim validate``: what a check is, how it is run and judged.

A check (C1 ... C16 of docs/THEORY.md) is a `Check`: a plain function ``run(params, rec)`` with
its default parameters (docs/THEORY.md sizes, and smaller ones for ``--quick``) and the minimum of
each parameter. The function builds real scenarios, runs them, and reports each comparison of a
simulated value with a closed form of `asgd_sim.validation.theory` through ``rec.add(...)``, and
data for the report's figures through ``rec.figure(...)``. This module knows no particular check:
the checks are declared in the ``checks_*`` modules and listed, in order, in `catalog`; the
printed table is `format`, the report files `report`, the command `command`.

A row passes when the simulated value is within the tolerance of the prediction. The tolerance
says what it is: ``rel`` (|sim - pred| <= tol |pred|), ``abs`` (|sim - pred| <= tol), ``max``
(sim <= pred: the prediction is an upper bound) or ``min`` (sim >= pred: a lower bound). An
``info`` row is reported without a verdict (docs/THEORY.md asks for some results to be "reported
only", e.g. C6's ordering on an MLP): it prints INFO and never fails the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ScenarioError
from ..errors import closest

__all__ = ["CheckResult", "CheckOutcome", "Check", "Recorder", "Params", "select_from", "resolve_params", "run_checks",
           "verdict", "outcome_dict", "show", "KINDS", "OMITTED"]

KINDS = ("rel", "abs", "max", "min", "info")
# Checks of docs/THEORY.md that `validate` does not run, and why (shown by --only and in the report).
OMITTED: dict[str, str] = {}

Params = dict[str, Any]


@dataclass
class CheckResult:
    """One line of the table: a predicted and a simulated value and the verdict."""

    check: str  # "C12"
    quantity: str  # what is compared, e.g. "lock throughput X, M=5"
    predicted: Any  # a float (or bool/int) from asgd_sim.validation.theory, for these parameters
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


# --- checks and choosing among them --------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """A check: its function and its default parameters (full, and the --quick changes).

    ``limits`` maps a parameter to (minimum, why): a ``--set`` value below it is refused.
    """

    name: str
    title: str
    run: Callable[[Params, Recorder], None]
    full: Params
    quick: Params = field(default_factory=dict)
    limits: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (minimum, why)

    def __post_init__(self) -> None:
        unknown = set(self.quick) - set(self.full)
        assert not unknown, f"{self.name}: quick parameters {unknown} have no full default"

    def defaults(self, quick: bool) -> Params:
        return {**self.full, **(self.quick if quick else {})}


def select_from(available: Sequence[Check], only: str | None) -> list[Check]:
    """The checks of ``available`` named in ``--only`` (comma-separated, any case), or all of them."""
    registry = {check.name: check for check in available}
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
                raise ScenarioError(where, f"= {item!r}: must be a whole number (default {show(default)})") from None
        if kind is float:
            try:
                value = float(item)
            except ValueError:
                raise ScenarioError(where, f"= {item!r}: must be a number (default {show(default)})") from None
            if not math.isfinite(value):
                raise ScenarioError(where, f"= {item!r}: must be finite")
            return value
        return item

    if isinstance(default, tuple):
        kind = type(default[0]) if default else float
        items = [item for item in text.strip("[]()").split(",") if item.strip()]
        if not items:
            raise ScenarioError(where, f"= {text!r}: give one or more values separated by commas, e.g. {show(default)}")
        return tuple(scalar(kind, item) for item in items)
    return scalar(type(default), text)


def show(value: Any) -> str:
    """A parameter value as ``--set`` takes it (a tuple as comma-separated values)."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _check_limits(check: Check, params: Params) -> None:
    for key, (minimum, why) in check.limits.items():
        values = params[key] if isinstance(params[key], tuple) else (params[key],)
        for value in values:
            if value < minimum:
                raise ScenarioError(f"{check.name}.{key}", f"= {show(params[key])}: must be >= {minimum:g} ({why})")


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
                                f"{', '.join(f'{k}={show(v)}' for k, v in check.full.items())})") from None
        outcomes.append(CheckOutcome(check.name, check.title, params[check.name], rec.rows, rec.figures,
                                     time.perf_counter() - started))
    return outcomes


def outcome_dict(outcome: CheckOutcome) -> dict[str, Any]:
    """An outcome as plain data (for validation.json)."""
    return {"name": outcome.name, "title": outcome.title, "params": {k: list(v) if isinstance(v, tuple) else v
                                                                     for k, v in outcome.params.items()},
            "passed": outcome.passed, "seconds": outcome.seconds, "rows": [asdict(r) for r in outcome.rows],
            "figures": outcome.figures}
