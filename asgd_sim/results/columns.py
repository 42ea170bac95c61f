"""The columns of a run's metrics (metrics.csv) and the pandas frame of them that `load_run` and
`Result.metrics_frame` both give: the same columns, in the same order, with the same throughput."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..scenario.config import METRICS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["METRIC_COLUMNS", "FRAME_COLUMNS", "metrics_frame", "rate"]

# The columns of metrics.csv, one row per evaluation.
METRIC_COLUMNS = ("update", "sim_time", *METRICS, "staleness_mean")
# The frame adds the throughput between rows.
FRAME_COLUMNS = (*METRIC_COLUMNS, "throughput")


def rate(updates: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Updates per simulated second between consecutive rows (NaN for the first row)."""
    out = np.full(updates.shape, np.nan)
    if updates.size > 1:
        dt = np.diff(times)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[1:] = np.where(dt > 0, np.diff(updates) / dt, np.nan)
    return out


def metrics_frame(columns: Any) -> pd.DataFrame:
    """A metrics table (a frame, or a dict of equal-length arrays) as the frame users get: the
    throughput added, the known columns first (NaN where a run lacks one: an older folder, a
    timing-only run's losses), then any other column it has."""
    import pandas as pd

    frame = pd.DataFrame(columns).copy()
    frame["update"] = frame["update"].astype(np.int64)
    frame["throughput"] = rate(frame["update"].to_numpy(float), frame["sim_time"].to_numpy(float))
    return frame.reindex(columns=list(dict.fromkeys([*FRAME_COLUMNS, *frame.columns])))
