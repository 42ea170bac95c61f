"""The timing layer: the SimPy discrete-event engine that decides *when* every gradient is read,
computed, pushed and applied (workers, network, server locks), driving the server policies of
`asgd_sim.algorithms`. Imports no JAX."""

from .engine import TimingEngine, TimingResult, simulate_timing

__all__ = ["TimingEngine", "TimingResult", "simulate_timing"]
