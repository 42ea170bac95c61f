"""Targets on any metric, and when a run reached one.

    --target 0.9                    test accuracy >= 0.9 (a bare number: backward compatible)
    --target train_loss<=0.1        any column of metrics.csv, with <= or >=
    --target grad_norm_sq<=0.01

A run that stopped at its own ``run.target_accuracy`` knows exactly when it got there (the
summary's ``time_to_target``, located to the update: `numerics.stream.locate_crossing`). Any other
target is read off the run's evaluations: the first evaluation at the target, interpolated
linearly from the one before, and the width of that interval is the *resolution* printed beside
the value (``run.eval_every`` updates, or their simulated time).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScenarioError, closest

__all__ = ["Target", "Reach", "parse_target", "check_target", "reach", "X_COLUMNS"]

X_COLUMNS = {"sim_time": "sim_time", "updates": "update"}  # --x -> the metrics column
_FORM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(\S+)\s*$")
_EXAMPLES = "e.g. --target 0.9 (test accuracy), --target train_loss<=0.1 or --target grad_norm_sq<=0.01"


@dataclass(frozen=True)
class Target:
    """``metric op value``: reached at the first evaluation where it holds."""

    metric: str
    op: str  # ">=" or "<="
    value: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    @property
    def short(self) -> str:
        """For table headers: ``acc>=0.9`` for the test accuracy, else the full text."""
        return f"acc>={self.value:g}" if self.is_accuracy() else self.text

    def is_accuracy(self, value: float | None = None) -> bool:
        """Whether this is ``test_accuracy >= value`` (any value when None): a run's own target."""
        return self.metric == "test_accuracy" and self.op == ">=" and (value is None or math.isclose(value, self.value))

    def met(self, values: Any) -> np.ndarray:
        """Per value: whether it meets the target (NaN never does)."""
        values = np.asarray(values, float)
        with np.errstate(invalid="ignore"):
            return values >= self.value if self.op == ">=" else values <= self.value


def parse_target(text: str | float | None) -> Target | None:
    """``0.9`` -> test_accuracy >= 0.9; ``METRIC<=VALUE`` or ``METRIC>=VALUE``; None stays None."""
    if text is None or isinstance(text, Target):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _accuracy(float(text), str(text))
    raw = str(text).strip()
    try:
        bare = float(raw)
    except ValueError:
        bare = None
    if bare is not None:
        return _accuracy(bare, raw)
    found = _FORM.match(raw)
    if not found:
        raise ScenarioError("--target", f"= {raw!r}: write METRIC<=VALUE or METRIC>=VALUE, or a bare test accuracy; {_EXAMPLES}")
    metric, op, number = found.groups()
    try:
        value = float(number)
    except ValueError:
        raise ScenarioError("--target", f"= {raw!r}: {number!r} is not a number; {_EXAMPLES}") from None
    if not math.isfinite(value):
        raise ScenarioError("--target", f"= {raw!r}: the value must be finite; {_EXAMPLES}")
    return Target(metric, op, value)


def _accuracy(value: float, raw: str) -> Target:
    if not 0 < value <= 1:
        raise ScenarioError("--target", f"= {raw}: a bare number is a test accuracy in (0, 1]; for another metric write "
                            f"METRIC<=VALUE or METRIC>=VALUE, {_EXAMPLES}")
    return Target("test_accuracy", ">=", value)


def check_target(target: Target, columns: Iterable[str], flag: str = "--target") -> None:
    """Refuse a metric the runs' metrics frames do not have, naming the ones they do."""
    available = [c for c in dict.fromkeys(columns) if c not in ("update", "sim_time")]
    if target.metric not in available:
        hint = closest(target.metric, available)
        given = target.text if flag == "--target" else target.metric
        raise ScenarioError(flag, f"= {given}: unknown metric {target.metric!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                            + f"; the runs' metrics.csv columns are {', '.join(available)}")


@dataclass(frozen=True)
class Reach:
    """When a run reached a target: ``value`` (simulated seconds or updates; None: never),
    whether it is exact, and the width of the evaluation interval it was interpolated in."""

    value: float | None
    exact: bool = True
    resolution: float = 0.0

    @property
    def reached(self) -> bool:
        return self.value is not None


def reach(curve: pd.DataFrame, target: Target, x: str, summary: dict[str, Any] | None = None,
          own_target: float | None = None) -> Reach:
    """When ``curve`` (a run's metrics frame) first met ``target``, on the ``x`` axis.

    The run's own ``run.target_accuracy`` (``own_target``), located exactly by the run, comes
    from its ``summary``; anything else is interpolated between evaluations.
    """
    column = X_COLUMNS[x]
    exact = summary.get("time_to_target_exact") if summary else None
    if own_target is not None and target.is_accuracy(own_target) and isinstance(exact, (bool, np.bool_)) and exact:
        value = summary.get("time_to_target" if x == "sim_time" else "updates_to_target") if summary else None
        if value is not None and math.isfinite(float(value)):
            return Reach(float(value))
    if target.metric not in curve.columns:
        return Reach(None)
    ys, xs = curve[target.metric].to_numpy(float), curve[column].to_numpy(float)
    hit = np.flatnonzero(target.met(ys))
    if not hit.size:
        return Reach(None)
    i = int(hit[0])
    if i == 0:
        return Reach(float(xs[0]))
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    fraction = (target.value - y0) / (y1 - y0) if math.isfinite(y0) and y1 != y0 else 1.0
    return Reach(float(x0 + min(max(fraction, 0.0), 1.0) * (x1 - x0)), exact=False, resolution=float(x1 - x0))
