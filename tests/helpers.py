"""Helpers shared by the test modules (not a test module, not a conftest: import it by name).

The ideal cluster of the theory (zero latency, infinite bandwidth, zero apply time and lock
hand-off) is defined once, in ``IDEAL_CLUSTER``, and spelled two ways:

* ``make_scenario(*groups, **knobs)``: the keyword form the timing tests use; it builds the frozen
  config dataclasses directly (no JAX, no scenario files) and each test states only what it models.
* ``ideal_scenario(name, *parts, **sections)``: the dict-merge form the numerics tests use; scenario
  tables merged over the ideal cluster and an SGD default, resolved by ``scenario_from_dict``.

Also here: trace helpers of the timing tests (``group``, ``applied_order``, ``rows``), problem
tables of the numerics tests (``quadratic``, ``EXP1``, ``MLP32``, ``LOGREG``), and what the
real-backend tests share (``ROOT``, ``FORCED_DEVICES``, ``forced_env``, ``check_trace``,
``replay_max_diff``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path
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
from asgd_sim.scenario.files import scenario_from_dict
from asgd_sim.trace import APPLIED, Trace

INF = math.inf
ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the ideal cluster

# The one definition of the ideal cluster (THEORY.md): both builders below take their defaults here.
IDEAL_CLUSTER: dict[str, dict[str, Any]] = {
    "network": {"latency": 0.0, "bandwidth": INF, "server_bandwidth": INF},
    "server": {"apply_time": 0.0, "lock_handoff": 0.0},
}
_NETWORK, _SERVER = IDEAL_CLUSTER["network"], IDEAL_CLUSTER["server"]


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
    latency: float | Distribution = _NETWORK["latency"],
    bandwidth: float = _NETWORK["bandwidth"],
    server_bandwidth: float = _NETWORK["server_bandwidth"],
    compression: float = 1.0,
    shards: int = 1,
    lock: str = "shard",
    apply: float | Distribution = _SERVER["apply_time"],
    handoff: float | Distribution = _SERVER["lock_handoff"],
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


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, tables recursively (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def ideal_scenario(name: str, *parts: dict[str, Any], **sections: Any) -> Scenario:
    """The ideal cluster running SGD on 4 workers; later parts and keyword sections override."""
    data = merge(IDEAL_CLUSTER, {
        "run": {"until_updates": 200, "eval_every": 50},
        "workers": [{"count": 4, "compute": 1.0}],
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
    })
    for part in (*parts, sections):
        data = merge(data, part)
    return scenario_from_dict(data, name=name)


# --------------------------------------------------------------------------- problems

EXP1 = {"dist": "exponential", "mean": 1.0}
MLP32 = {"model": {"name": "mlp", "hidden": [32]}, "data": {"name": "digits"}}
LOGREG = {"model": {"name": "logreg"}, "data": {"name": "digits"}}


def quadratic(eigenvalues: Any, dim: int | None = None, noise: float = 0.0) -> dict[str, Any]:
    dim = dim if dim is not None else len(eigenvalues)
    return {"model": {"name": "quadratic", "dim": dim, "eigenvalues": eigenvalues, "noise": noise}, "data": {"name": "none"}}


# --------------------------------------------------------------------------- traces

def applied_order(trace: Any) -> np.ndarray:
    """Gradient ids of the single-shard update rows in commit order (one gradient per row)."""
    return np.array([int(trace.members(r)[0][0]) for r in range(trace.num_update_rows)])


def rows(trace: Any, gids: Any = None, worker: int | None = None) -> list[tuple]:
    """(worker, k, t_read, read_version[0], t_applied, staleness) of the given gradients."""
    if gids is None:
        gids = range(trace.num_gradients) if worker is None else np.flatnonzero(trace.worker == worker)
    return [(int(trace.worker[g]), int(trace.k[g]), float(trace.t_read[g]), int(trace.read_version[g, 0]),
             float(trace.t_applied[g]), int(trace.staleness[g])) for g in gids]


# --------------------------------------------------------------------------- real backends

FORCED_DEVICES = 4


def forced_env(devices: int = FORCED_DEVICES) -> dict[str, str]:
    """The environment of a subprocess that sees ``devices`` CPU devices (JAX reads it at start)."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return env


def replay_max_diff(run_dir: Path) -> tuple[float, object]:
    """Max |real - replayed| over the final parameters of a real run folder, and the replay."""
    from jax.flatten_util import ravel_pytree

    from asgd_sim.runner import replay

    result = replay(run_dir)
    real = np.load(run_dir / "final_params.npy")
    return float(np.abs(real - np.asarray(ravel_pytree(result.params)[0])).max()), result


def check_trace(trace: Trace) -> None:
    """The simulator's invariants hold for a real trace."""
    applied = trace.fate == APPLIED
    t = trace.times
    for a, b in (("t_pull", "t_read"), ("t_read", "t_compute_start"), ("t_compute_start", "t_compute_end"),
                 ("t_compute_end", "t_arrive"), ("t_arrive", "t_lock"), ("t_lock", "t_applied")):
        assert np.all(t[a][applied] <= t[b][applied] + 1e-9), (a, b)
    for shard in range(trace.shards):
        rows = np.flatnonzero(trace.u_shard == shard)
        assert np.array_equal(trace.u_version[rows], np.arange(1, len(rows) + 1))  # one version per update, in order
        assert np.all(np.diff(trace.u_applied[rows]) >= 0)
        for r in rows:  # staleness = version just before the update - version read
            gids, _ = trace.members(r)
            assert np.all(trace.u_version[r] - 1 - trace.read_version[gids, shard] <= trace.staleness[gids])
    rows_of = rows_by_push(trace)  # a push is one update row per shard at most, all requested before they lock
    assert (trace.u_push >= 0).all() and all(len(set(trace.u_shard[rows].tolist())) == len(rows) for rows in rows_of.values())
    for w in np.unique(trace.worker):  # a worker's reads never go back in time
        mine = trace.worker == w
        assert np.all(np.diff(trace.read_version[mine], axis=0) >= 0)
        assert np.array_equal(trace.k[mine], np.arange(mine.sum()))


def rows_by_push(trace: Trace) -> dict[int, list[int]]:
    """The update rows of each push number, in plain Python."""
    rows_of: dict[int, list[int]] = {}
    for row, push in enumerate(trace.u_push.tolist()):
        rows_of.setdefault(push, []).append(row)
    return rows_of


def lock_waits_per_push(trace: Trace, global_lock: bool) -> list[float]:
    """Per push: request to holding every lock it needs (its first row's lock under one global
    lock, else its last row's), computed row by row, independently of results.summary."""
    waits = []
    for rows in rows_by_push(trace).values():
        locks = [float(trace.u_lock[r]) for r in rows]
        waits.append((min(locks) if global_lock else max(locks)) - min(float(trace.u_request[r]) for r in rows))
    return waits
