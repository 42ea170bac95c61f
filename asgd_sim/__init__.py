"""asgd-sim: simulate and run asynchronous parallel SGD.

A SimPy timing engine decides *when* every gradient is read, computed and applied; a JAX
numerics engine computes each gradient at exactly the stale parameters its worker read.

    import asgd_sim
    result = asgd_sim.simulate("scenarios/quickstart.toml", ["workers[0].count=16"])
    result.metrics["test_accuracy"], result.summary["staleness"]["mean"]

Timing-only (no JAX import): ``asgd_sim.simulate_timing(asgd_sim.load_scenario(path))``.
"""

from __future__ import annotations

from typing import Any

from .config import Scenario
from .engine import TimingResult, simulate_timing
from .errors import ScenarioError
from .scenario import dump_scenario, load_scenario, scenario_from_dict
from .trace import Trace

__all__ = [
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "scenario_from_dict",
    "dump_scenario",
    "simulate_timing",
    "TimingResult",
    "Trace",
    "simulate",
    "replay",
    "Result",
    "load_run",
    "load_sweep",
]
__version__ = "0.1.0"

_LAZY = {"simulate": "simulate", "replay": "simulate", "Result": "simulate",  # these import JAX
         "load_run": "results", "load_sweep": "results"}  # these read result folders (pandas)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'asgd_sim' has no attribute {name!r}")
