"""Shared helpers for building small timing scenarios directly from the frozen config dataclasses.

Timing tests need no JAX and no scenario files: ``make_scenario`` builds a Scenario whose defaults
are the *ideal* cluster of the theory (zero latency, infinite bandwidth, zero apply time), so each
test states only what it models.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from asgd_sim.scenario.config import (
    AlgorithmConfig,
    ModelConfig,
    NetworkConfig,
    RunConfig,
    Scenario,
    ServerConfig,
    WorkerGroup,
)
from asgd_sim.scenario.distributions import Constant, Distribution

INF = math.inf


def dist(value: float | Distribution) -> Distribution:
    """A bare number is a constant duration."""
    return value if isinstance(value, Distribution) else Constant(float(value))


def group(compute: float | Distribution, count: int = 1, name: str = "", **kw: Any) -> WorkerGroup:
    """A worker group; ``kw`` are the other WorkerGroup fields (stagger, slowdowns, failures, ...).

    Unnamed groups are called g0, g1, ... by ``make_scenario`` in the order given.
    """
    return WorkerGroup(name=name, count=count, compute=dist(compute), **kw)


def make_scenario(
    *groups: WorkerGroup,
    kind: str = "async",
    updates: int | None = 100,
    until_time: float | None = None,
    seed: int = 0,
    latency: float | Distribution = 0.0,
    bandwidth: float = INF,
    server_bandwidth: float = INF,
    compression: float = 1.0,
    shards: int = 1,
    lock: str = "shard",
    apply: float | Distribution = 0.0,
    handoff: float | Distribution = 0.0,
    atomic: bool = False,
    lock_order: str = "sorted",
    racks: tuple = (),
    param_bytes: float | None = None,
    **algorithm: Any,
) -> Scenario:
    """A Scenario from groups plus the knobs the timing tests turn (ideal cluster by default)."""
    named = tuple(g if g.name else dataclasses.replace(g, name=f"g{i}") for i, g in enumerate(groups))
    return Scenario(
        name="test",
        run=RunConfig(seed=seed, until_updates=updates, until_time=until_time),
        workers=named,
        racks=racks,
        network=NetworkConfig(latency=dist(latency), bandwidth=bandwidth, server_bandwidth=server_bandwidth,
                              compression=compression),
        server=ServerConfig(shards=shards, lock=lock, apply_time=dist(apply), lock_handoff=dist(handoff), atomic=atomic,
                            lock_order=lock_order),
        algorithm=AlgorithmConfig(kind=kind, **algorithm),
        model=ModelConfig(param_bytes=param_bytes),
    )


def applied_order(trace: Any) -> np.ndarray:
    """Gradient ids of the single-shard update rows in commit order (one gradient per row)."""
    return np.array([int(trace.members(r)[0][0]) for r in range(trace.num_update_rows)])


def rows(trace: Any, gids: Any = None, worker: int | None = None) -> list[tuple]:
    """(worker, k, t_read, read_version[0], t_applied, staleness) of the given gradients."""
    if gids is None:
        gids = range(trace.num_gradients) if worker is None else np.flatnonzero(trace.worker == worker)
    return [(int(trace.worker[g]), int(trace.k[g]), float(trace.t_read[g]), int(trace.read_version[g, 0]),
             float(trace.t_applied[g]), int(trace.staleness[g])) for g in gids]
