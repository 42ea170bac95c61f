"""What the checks of ``asgd-sim validate`` share: ideal-cluster scenarios, runs, and trace reading.

A check builds Scenario objects (`scenario_from_dict`) with `scenario`, runs them with `timing`
(``simulate_timing``: the schedule only) or `simulate_run` (``simulate``: schedule and JAX
numerics), and reads what it compares from the trace. Scenarios run on the ideal cluster of the
theory (zero latency, infinite bandwidth, zero apply time) unless the check is about the server
itself. Importing this module does not import JAX: `simulate_run` and `flat` import it when called.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..timing.engine import simulate_timing
from ..scenario.files import scenario_from_dict
from ..trace import APPLIED

INF = math.inf
EXP1 = {"dist": "exponential", "mean": 1.0}
POSITIVE = (1, "at least one")


def scenario(workers: list[dict[str, Any]] | dict[str, Any], *, updates: int, seed: int = 0, kind: str = "async",
             model: dict[str, Any] | None = None, **sections: Any):
    """An ideal-cluster scenario. ``model`` defaults to a 1-D quadratic (irrelevant to timing)."""
    data: dict[str, Any] = {
        "run": {"until_updates": updates, "seed": seed, "eval_every": max(1, updates), "max_loss": 1e6},
        # Unnamed groups are called g0, g1, ... (group names must differ).
        "workers": [{"name": f"g{i}", **g} for i, g in enumerate(workers if isinstance(workers, list) else [workers])],
        "network": {"latency": 0.0, "bandwidth": INF, "server_bandwidth": INF},
        "server": {"apply_time": 0.0},
        "algorithm": {"kind": kind},
        "model": model or {"name": "quadratic", "dim": 1, "eigenvalues": [1.0]},
        "data": {"name": "none"},
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
    }
    for section, values in sections.items():  # a table merges into the default; an array ([[devices]]) is set
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return scenario_from_dict(data, name="validate")


def quadratic(eigenvalues: Any, dim: int, noise: float = 0.0) -> dict[str, Any]:
    return {"name": "quadratic", "dim": dim, "eigenvalues": eigenvalues, "noise": noise}


def timing(*args: Any, **kwargs: Any):
    return simulate_timing(scenario(*args, **kwargs))


def simulate_run(*args: Any, **kwargs: Any):
    from ..runner import simulate  # imports JAX: only the numerics checks pay for it

    return simulate(scenario(*args, **kwargs))


def applied_staleness(trace: Any) -> np.ndarray:
    return trace.staleness[trace.fate == APPLIED]


def update_reads(trace: Any, T: int) -> np.ndarray:
    """The version read by the gradient of each of the first T updates (one gradient per update)."""
    if trace.num_update_rows < T or not np.all(np.diff(trace.member_offsets[: T + 1]) == 1):
        raise RuntimeError("expected one gradient per update")
    return trace.read_version[trace.member_gid[trace.member_offsets[:T]], 0]


def flat(params: Any) -> np.ndarray:
    from jax.flatten_util import ravel_pytree

    return np.asarray(ravel_pytree(params)[0])


def growing(values: np.ndarray, window: int) -> bool:
    """Whether a sequence's envelope grows: max over its last `window` vs the window before its middle."""
    n = len(values)
    middle = n // 2
    early, late = values[max(0, middle - window): middle], values[max(0, n - window):]
    return bool(np.max(late) > np.max(early))
