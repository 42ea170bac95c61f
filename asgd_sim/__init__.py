"""asgd-sim: simulate and run asynchronous parallel SGD.

A SimPy timing engine decides *when* every gradient is read, computed and applied; a JAX
numerics engine computes each gradient at exactly the stale parameters its worker read.

    import asgd_sim
    result = asgd_sim.simulate("scenarios/quickstart.toml", ["workers[0].count=16"])
    result.metrics["test_accuracy"], result.summary["staleness"]["mean"]

Timing-only (no JAX import): ``asgd_sim.simulate_timing(asgd_sim.load_scenario(path))``.

The layers, each importing only those below it (docs/DESIGN.md): ``scenario`` (typed config,
schema, files) -> ``trace`` -> ``algorithms`` (server policies) -> ``timing`` (SimPy engine) and
``numerics`` (JAX engine) -> ``results`` (summary, plots, run folders) -> ``backends`` (real runs)
-> ``runner`` (one run path) -> ``studies`` (sweeps, comparisons, calibration) and ``validation``
(theory checks) -> ``cli``.
"""

from .errors import ScenarioError
from .scenario import Scenario, dump_scenario, load_scenario, scenario_from_dict
from .timing import TimingResult, simulate_timing
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

# Loaded on first use: the first three import JAX, the last two pandas. No module of the package
# shares one of these names, so importing any submodule never hides the function behind it.
_LAZY = {
    "simulate": ("runner", "simulate"),
    "replay": ("runner", "replay"),
    "Result": ("results.result", "Result"),
    "load_run": ("results.load", "load_run"),
    "load_sweep": ("results.load", "load_sweep"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        module, attribute = _LAZY[name]
        value = getattr(import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'asgd_sim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
