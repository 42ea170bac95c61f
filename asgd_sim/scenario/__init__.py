"""The scenario layer: the typed config tree, compute-time distributions, the schema that
validates a raw tree, and TOML files. Imports neither JAX nor SimPy."""

from .config import Scenario
from .files import apply_overrides, dump_scenario, dumps_scenario, load_scenario, scenario_from_dict, scenario_to_dict

__all__ = ["Scenario", "load_scenario", "scenario_from_dict", "apply_overrides", "scenario_to_dict", "dump_scenario",
           "dumps_scenario"]
