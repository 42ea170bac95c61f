"""`Result`: what one run produced, whichever engine or backend ran it."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..scenario.config import Scenario
from ..trace import Trace
from .columns import METRIC_COLUMNS, metrics_frame

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Result", "METRIC_COLUMNS"]


@dataclass
class Result:
    """A finished run: the trace, the learning curves, the summary and the final parameters.

    ``metrics`` maps each of `METRIC_COLUMNS` to a numpy array (one entry per evaluation); it is
    empty for a timing-only run, whose ``params`` are None. ``flat_params`` is the real server's
    final parameter vector (real backends only: what a replay of the trace must reproduce).
    ``metrics_frame`` is the same as a pandas frame, and ``save(out)`` writes the run folder.
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

    @property
    def metrics_frame(self) -> pd.DataFrame:
        """The metrics as the frame ``asgd_sim.load_run`` gives for the saved run: one row per
        evaluation, columns update, sim_time, train_loss, test_accuracy, grad_norm_sq,
        suboptimality, staleness_mean, throughput; ``attrs`` hold ``summary`` and ``scenario``
        as plain dicts, as summary.json and scenario.toml read back. A timing-only run has no
        evaluations: save it and use ``load_run``, which derives its rows from the trace."""
        from ..scenario.files import dumps_scenario

        frame = metrics_frame({name: np.asarray(self.metrics.get(name, []), float) for name in METRIC_COLUMNS})
        frame.attrs.update(summary=json.loads(json.dumps(self.summary, default=_jsonable)),
                           scenario=tomllib.loads(dumps_scenario(self.scenario)), path=None)
        return frame

    def save(self, out: str | Path) -> Path:
        """Write the run folder (what ``asgd-sim run --out`` writes; ``asgd_sim.load_run`` reads
        it back) and return its path."""
        from .folder import write_run

        write_run(self, out)
        return Path(out)


def _jsonable(value: Any) -> Any:  # (as results.folder.write_json writes summary.json)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
