"""`Result`: what one run produced, whichever engine or backend ran it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..scenario.config import METRICS, Scenario
from ..trace import Trace

__all__ = ["Result", "METRIC_COLUMNS"]

# The columns of metrics.csv, one row per evaluation.
METRIC_COLUMNS = ("update", "sim_time", *METRICS, "staleness_mean")


@dataclass
class Result:
    """A finished run: the trace, the learning curves, the summary and the final parameters.

    ``metrics`` maps each of `METRIC_COLUMNS` to a numpy array (one entry per evaluation); it is
    empty for a timing-only run, whose ``params`` are None. ``flat_params`` is the real server's
    final parameter vector (real backends only: what a replay of the trace must reproduce).
    """

    scenario: Scenario
    trace: Trace
    metrics: dict[str, np.ndarray]
    summary: dict[str, Any]
    params: Any = None
    flat_params: np.ndarray | None = None

    @property
    def diverged(self) -> bool:
        return bool(self.summary.get("diverged", False))

    @property
    def timing_only(self) -> bool:
        return not self.metrics
