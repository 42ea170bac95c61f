"""Real backends: the scenario's cluster run for real, recording the simulator's trace.

- ``devices``: one process, one thread per worker, each bound to a JAX device (`devices.run_devices`).
- ``ray``: server and workers as Ray actors, locally or on a cluster (`ray_backend.run_ray`).

Both use the thread-safe parameter server of `backends.server` and the worker loop of
`backends.worker`, so they run the same algorithms and write the same trace as the simulator;
`asgd_sim.simulate.replay` of a real run reproduces its parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["BACKENDS", "run_backend"]

BACKENDS = ("sim", "devices", "ray")


def run_backend(backend: str, scenario: Any, out: str | Path | None, **options: Any) -> Any:
    """Run ``scenario`` on a real backend ("devices" or "ray"); returns a `simulate.Result`."""
    if backend == "devices":
        from .devices import run_devices

        return run_devices(scenario, out, **options)
    if backend == "ray":
        from .ray_backend import run_ray

        return run_ray(scenario, out, **options)
    raise ValueError(f"backend = {backend!r}: choose one of {', '.join(BACKENDS[1:])} (or 'sim' to simulate)")
