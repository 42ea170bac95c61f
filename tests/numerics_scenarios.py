"""Scenario builders shared by the numerics tests: an ideal cluster, overridden part by part."""

from __future__ import annotations

import copy
import math
from typing import Any

from asgd_sim.scenario.files import scenario_from_dict

INF = math.inf
EXP1 = {"dist": "exponential", "mean": 1.0}
MLP32 = {"model": {"name": "mlp", "hidden": [32]}, "data": {"name": "digits"}}
LOGREG = {"model": {"name": "logreg"}, "data": {"name": "digits"}}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, tables recursively (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def ideal_scenario(name: str, *parts: dict[str, Any], **sections: Any):
    """Zero latency, infinite bandwidth, free applies, SGD; later parts and sections override."""
    data: dict[str, Any] = {
        "run": {"until_updates": 200, "eval_every": 50},
        "workers": [{"count": 4, "compute": 1.0}],
        "network": {"latency": 0.0, "bandwidth": INF, "server_bandwidth": INF},
        "server": {"apply_time": 0.0},
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
    }
    for part in (*parts, sections):
        data = merge(data, part)
    return scenario_from_dict(data, name=name)


def quadratic(eigenvalues: Any, dim: int | None = None, noise: float = 0.0) -> dict[str, Any]:
    dim = dim if dim is not None else len(eigenvalues)
    return {"model": {"name": "quadratic", "dim": dim, "eigenvalues": eigenvalues, "noise": noise}, "data": {"name": "none"}}
