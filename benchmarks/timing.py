"""Timing-engine throughput against a bare SimPy loop, in one process (ratios, not absolutes).

Scenario: async, global lock, constant latency, constant compute, and either no bandwidth limit
(transfers take no time: ``results``) or a finite, fairly shared network (``finite_bandwidth``:
each worker's link of ``bandwidth`` and the server NIC of ``server_bandwidth`` per direction, the
model's 340 kB messages). The baseline is the loop a SimPy user writes first: M processes, each
step one timeout plus one Resource request/release. The two run in alternating slices of about
1/40 of the run each, so that both see the same load on a shared machine. Prints one JSON object.

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

INF = float("inf")
SLICES = 40


class BareSimPy:
    """M processes, each step one timeout and one request/release of a capacity-1 Resource."""

    def __init__(self, workers: int) -> None:
        self.env = env = simpy.Environment()
        lock = simpy.Resource(env, capacity=1)
        self.done = 0

        def worker():
            while True:
                yield env.timeout(1.0)
                with lock.request() as request:
                    yield request
                self.done += 1

        for _ in range(workers):
            env.process(worker())

    def run(self, steps: int) -> tuple[float, float]:
        """Wall and CPU seconds to take ``steps`` more steps."""
        target, step = self.done + steps, self.env.step
        start, cpu = time.perf_counter(), time.process_time()
        while self.done < target:
            step()
        return time.perf_counter() - start, time.process_time() - cpu


def bare_simpy_steps_per_s(workers: int, steps: int) -> float:
    return steps / BareSimPy(workers).run(steps)[0]


def scenario(workers: int, updates: int, bandwidth: float = INF, server_bandwidth: float = INF) -> Scenario:
    # Compute 1 s and apply 1/(2M) s: the global lock is busy about half the time.
    return Scenario(
        name=f"bench-async-global-{workers}",
        run=RunConfig(until_updates=updates),
        workers=(WorkerGroup(count=workers, compute=Constant(1.0)),),
        network=NetworkConfig(latency=Constant(0.001), bandwidth=bandwidth, server_bandwidth=server_bandwidth),
        server=ServerConfig(lock="global", apply_time=Constant(0.5 / workers)),
        algorithm=AlgorithmConfig(kind="async"),
    )


def measure(sc: Scenario) -> dict:
    """The engine and the bare loop in alternating slices: rates, their ratio (of wall times, and
    of CPU times: on a shared machine the process may wait for a core) and the engine's wall time."""
    workers, updates = sc.num_workers, sc.run.until_updates
    started = time.perf_counter()
    engine = TimingEngine(sc)
    bare = BareSimPy(workers)
    engine_s = bare_s = engine_cpu = bare_cpu = 0.0
    for i in range(1, SLICES + 1):
        target = updates * i // SLICES
        steps = target - engine.updates
        t0, c0 = time.perf_counter(), time.process_time()
        engine.step_until(target)
        engine_s += time.perf_counter() - t0
        engine_cpu += time.process_time() - c0
        wall, cpu = bare.run(steps)
        bare_s += wall
        bare_cpu += cpu
    assert engine.updates == updates, engine.stopped
    ups, steps_per_s = updates / engine_s, updates / bare_s
    return {"workers": workers, "updates": updates, "engine_updates_per_s": round(ups), "bare_simpy_steps_per_s": round(steps_per_s),
            "ratio_vs_bare": round(ups / steps_per_s, 3), "ratio_cpu": round(bare_cpu / engine_cpu, 3),
            "total_wall_s": round(time.perf_counter() - started - bare_s, 2), "loop": type(engine.loop).__name__}


# (workers, updates, worker link bytes/s, server NIC bytes/s): 1e18 never makes a transfer wait on
# another; 1.25e9 (10 Gb/s, the default) lets a message meet another now and then; a NIC of 5e8 at
# M = 1,000 (5e9 at M = 10,000: ten times the messages) is busy ~70 % of the time in each
# direction, so transfers share it often.
FINITE = ((1000, 300_000, 1e18, 1e18), (1000, 300_000, 1.25e9, 1.25e9), (1000, 300_000, 1.25e9, 5e8),
          (10_000, 1_000_000, 1e18, 1e18), (10_000, 1_000_000, 1.25e9, 5e9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    rows = [measure(scenario(workers, updates // scale)) for workers, updates in ((8, 300_000), (1000, 300_000), (10_000, 1_000_000))]
    finite = []
    for workers, updates, bandwidth, server_bandwidth in FINITE:
        # (--quick: the M = 10,000 rows at 20,000 updates, a smoke test of a few seconds each)
        row = measure(scenario(workers, updates // (scale * 5 if args.quick and workers >= 10_000 else scale), bandwidth, server_bandwidth))
        finite.append({"bandwidth": bandwidth, "server_bandwidth": server_bandwidth, **row})
    print(json.dumps({"benchmark": "timing", "python": platform.python_version(), "simpy": simpy.__version__,
                      "results": rows, "finite_bandwidth": finite}, indent=2))


if __name__ == "__main__":
    main()
