"""TensorBoard event files of a run's evaluations, through tensorboardX (the ``tensorboard``
extra: ``pip install 'asgd-sim[tensorboard]'``; it writes the event format without TensorFlow).

`TensorBoardLogger(log_dir)` is a callback for ``asgd_sim.simulate(..., callbacks=[...])`` and what
``asgd-sim run --tensorboard DIR`` and ``asgd-sim sweep --tensorboard DIR`` (one sub-folder per
run) use. Every evaluation writes each measure it has (``train_loss``, ``test_accuracy``,
``grad_norm_sq``, ``suboptimality``, ``staleness_mean``; NaN ones are skipped) under
``metrics/<name>`` at step = server updates, with the event's wall time set to the *simulated*
time, so TensorBoard's "Relative" horizontal axis reads simulated seconds; and ``sim_time`` itself
as a scalar at each step, for the mapping from updates to simulated time.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from ..errors import ScenarioError

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """A callback writing each evaluation row to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str | Path) -> None:
        self.check_installed()
        from tensorboardX import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(logdir=str(self.log_dir), flush_secs=5)

    @staticmethod
    def check_installed() -> None:
        if importlib.util.find_spec("tensorboardX") is None:
            raise ScenarioError("--tensorboard", "needs tensorboardX: pip install 'asgd-sim[tensorboard]' "
                                "(or pip install tensorboardX)")

    def __call__(self, row: dict[str, Any]) -> None:
        step, sim_time = int(row["update"]), float(row["sim_time"])
        self._writer.add_scalar("sim_time", sim_time, global_step=step, walltime=sim_time)
        for name, value in row.items():
            if name in ("update", "sim_time") or value is None or math.isnan(float(value)):
                continue
            self._writer.add_scalar(f"metrics/{name}", float(value), global_step=step, walltime=sim_time)

    def close(self) -> None:
        """Flush and close the event file (a logger used after close opens a new one)."""
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
