"""Timing-engine throughput against a bare SimPy loop, in one process (ratios, not absolutes).

Scenario: async, global lock, constant latency, no bandwidth limit (transfers take no time), constant compute.
The baseline is the loop a SimPy user writes first: M processes, each step one timeout plus one
Resource request/release. Prints one JSON object.

    .venv/bin/python benchmarks/timing.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import simpy

from asgd_sim.scenario.config import AlgorithmConfig, NetworkConfig, RunConfig, Scenario, ServerConfig, WorkerGroup
from asgd_sim.scenario.distributions import Constant
from asgd_sim.timing.engine import TimingEngine


def bare_simpy_steps_per_s(workers: int, steps: int) -> float:
    env = simpy.Environment()
    lock = simpy.Resource(env, capacity=1)
    done = [0]

    def worker(env: simpy.Environment):
        while True:
            yield env.timeout(1.0)
            with lock.request() as request:
                yield request
            done[0] += 1

    for _ in range(workers):
        env.process(worker(env))
    start = time.perf_counter()
    while done[0] < steps:
        env.step()
    return steps / (time.perf_counter() - start)


def scenario(workers: int, updates: int) -> Scenario:
    # Compute 1 s and apply 1/(2M) s: the global lock is busy about half the time.
    return Scenario(
        name=f"bench-async-global-{workers}",
        run=RunConfig(until_updates=updates),
        workers=(WorkerGroup(count=workers, compute=Constant(1.0)),),
        network=NetworkConfig(latency=Constant(0.001), bandwidth=float("inf"), server_bandwidth=float("inf")),
        server=ServerConfig(lock="global", apply_time=Constant(0.5 / workers)),
        algorithm=AlgorithmConfig(kind="async"),
    )


def engine_updates_per_s(workers: int, updates: int) -> tuple[float, float]:
    start = time.perf_counter()
    engine = TimingEngine(scenario(workers, updates))
    built = time.perf_counter()
    result = engine.run()
    end = time.perf_counter()
    assert result.updates == updates, result.stopped
    return updates / (end - built), end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    rows = []
    for workers, updates in ((8, 300_000), (1000, 300_000), (10_000, 1_000_000)):
        updates //= scale
        bare = bare_simpy_steps_per_s(workers, updates)
        ups, total = engine_updates_per_s(workers, updates)
        rows.append({"workers": workers, "updates": updates, "engine_updates_per_s": round(ups),
                     "bare_simpy_steps_per_s": round(bare), "ratio_vs_bare": round(ups / bare, 3),
                     "total_wall_s": round(total, 2)})
    print(json.dumps({"benchmark": "timing", "python": platform.python_version(), "simpy": simpy.__version__,
                      "results": rows}, indent=2))


if __name__ == "__main__":
    main()
