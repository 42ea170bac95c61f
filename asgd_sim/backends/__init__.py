"""Real backends: the scenario's cluster run for real, recording the simulator's trace.

- ``devices``: one process, one thread per worker, each bound to a JAX device (`devices.run_devices`).
- ``ray``: server and workers as Ray actors, locally or on a cluster (`ray_backend.run_ray`).

Both use the thread-safe parameter server of `backends.server` and the worker loop of
`backends.worker`, so they run the same server policies and write the same trace as the
simulator; `asgd_sim.replay` of a real run reproduces its parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ScenarioError
from ..scenario.config import Scenario

__all__ = ["BACKENDS", "run_backend", "check_supported"]

BACKENDS = ("sim", "devices", "ray")


def check_supported(scenario: Scenario, backend: str) -> None:
    """Reject what the real backends cannot run, naming the key and the alternative (every
    algorithm runs: the real server drives the same policies as the simulator)."""
    if scenario.server.atomic and scenario.server.lock_order == "random" and scenario.server.lock in ("shard", "rw"):
        raise ScenarioError("server.lock_order", "= 'random': a real server taking locks in random order can deadlock "
                            "for good; use 'sorted' on a real backend (or --backend sim to study the deadlock)")


def run_backend(backend: str, scenario: Any, out: str | Path | None, **options: Any) -> Any:
    """Run ``scenario`` on a real backend ("devices" or "ray"); returns a `asgd_sim.Result` (the
    run folder is written by `asgd_sim.runner.run_scenario`; ``out`` holds checkpoints)."""
    if backend == "devices":
        from .devices import run_devices

        return run_devices(scenario, out, **options)
    if backend == "ray":
        from .ray_backend import run_ray

        return run_ray(scenario, out, **options)
    raise ValueError(f"backend = {backend!r}: choose one of {', '.join(BACKENDS[1:])} (or 'sim' to simulate)")
