"""The devices backend: one process, one thread per worker, each bound to a JAX device.

Worker w runs on ``jax.devices()[w % D]`` (on a CPU-only machine, several devices come from
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, set before JAX starts); the parameter
server (`backends.server.RealServer`) keeps the shards on device 0 and applies the updates there
with the scenario's lock policy and algorithm. Parameters travel by ``jax.device_put`` (the pull
and the push), gradients are computed by one jitted function per device, and every timestamp of
the trace is ``time.monotonic()`` after ``block_until_ready``.

``emulate=True`` makes homogeneous hardware behave like the scenario's cluster (see
`backends.worker`): sampled compute times, slowdowns, latencies and apply times become real
delays, drawn from the simulator's own per-worker streams.

Compilation happens before the clock starts (one gradient per device and one update), so the
trace starts with the cluster already warm.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import numpy as np

from ..scenario.config import Scenario
from ..errors import ScenarioError
from ..numerics.problems import build_problem
from ..timing.workers import build_workers
from ..trace import trace_meta
from .finish import finish_real_run
from ..numerics.layout import Layout
from . import check_supported
from .server import Clock, RealServer, freeze_collector
from .worker import WorkerHooks, run_worker, step_functions

__all__ = ["run_devices"]

POLL_S = 0.02


def run_devices(scenario: Scenario, out: str | Path | None = None, *, emulate: bool = False, resume: bool = False,
                devices: list[Any] | None = None, inject: Callable[[int, int], None] | None = None,
                stall_after: float | None = None, progress: Callable[[int, float], None] | None = None) -> Any:
    """Run ``scenario`` for real on JAX devices; returns an `asgd_sim.Result` (``out`` holds its checkpoints).

    ``resume`` continues the run in ``out`` from its last checkpoint. ``inject(worker, k)`` is
    called before each gradient (raise from it to crash a worker). A run that makes no update for
    ``stall_after`` seconds while no worker is due to restart stops as "stalled" (a sync barrier
    waiting for a worker that is down for good).
    """
    from .checkpoint import CheckpointWriter, load_checkpoint
    from ..numerics.compile_cache import enable_compilation_cache
    from ..results.folder import start_run_folder

    check_supported(scenario, "devices")
    sc = scenario
    enable_compilation_cache()
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise ScenarioError("--resume", "needs --out RUN_DIR, the folder of the run to continue")
    devices = list(devices or jax.devices())
    M = sc.num_workers
    problem = build_problem(sc, M)
    layout = Layout(problem, sc.server.shards, sc.run.seed)
    ckpt = load_checkpoint(out) if resume else None  # type: ignore[arg-type]
    writer = CheckpointWriter(out) if (sc.server.checkpoint_every and out is not None) else None
    clock = Clock(ckpt.t if ckpt is not None else 0.0)
    server = RealServer(sc, layout, device=devices[0], emulate=emulate, clock=clock, resume=ckpt, on_checkpoint=writer)
    grad, payload = step_functions(sc, layout, server.model_update)
    worker_device = [devices[w % len(devices)] for w in range(M)]
    for dev in dict.fromkeys(worker_device):  # compile once per device before the clock starts
        rows = jax.device_put(tuple(layout.initial), dev)
        jax.block_until_ready(grad(rows, np.int32(0), np.int32(0)))
        if payload is not None:
            jax.block_until_ready(payload(rows, rows))
    server.warm_up()
    if out is not None:
        start_run_folder(sc, out)
    transfer = 0.0 if math.isinf(sc.network.bandwidth) else sc.message_bytes(sc.model.param_bytes or problem.param_bytes) * sc.server.shards / sc.network.bandwidth
    states = build_workers(sc, sc.network.latency)
    threads = []
    for w, state in enumerate(states):
        dev = worker_device[w]
        slot = server.slots[w]
        hooks = WorkerHooks(
            fetch=lambda rows, dev=dev: jax.block_until_ready(jax.device_put(rows, dev)),
            compute=lambda rows, wid, k: jax.block_until_ready(grad(rows, np.int32(wid), np.int32(k))),
            ship=lambda gid, g, rows: jax.block_until_ready(jax.device_put(g, server.device)),
            cancelled=slot.cancel.is_set, inject=inject, needs_read=server.needs_read, payload=payload,
        )
        thread = threading.Thread(target=run_worker, args=(server, state, hooks),
                                  kwargs={"emulate": emulate, "clock": clock, "transfer": transfer,
                                          "local_steps": server.policy.local_steps},
                                  name=f"worker-{w}", daemon=True)
        threads.append(thread)
    with _collector_frozen():  # (its collection runs before the clock starts)
        started = time.perf_counter()
        clock.origin = time.monotonic() - (ckpt.t if ckpt is not None else 0.0)
        server.last_update_time = clock.now()
        for thread in threads:
            thread.start()
        stall = stall_after if stall_after is not None else _default_stall(sc)
        _supervise(server, threads, stall, progress)
        for thread in threads:
            thread.join(timeout=10)
    wall = time.perf_counter() - started
    if writer is not None:
        writer.close()
    server.close()
    meta = trace_meta(sc, server.stopped, server.stop_time, backend="devices", emulate=emulate, failures=server.failures)
    if server.resumed_from is not None:
        meta["resumed_from"] = server.resumed_from
    trace = server.freeze(meta)
    backend = {"name": "devices", "devices": [str(d) for d in devices], "worker_devices": [str(d) for d in worker_device],
               "emulate": emulate, "failures": server.failures, "resumed_from": server.resumed_from,
               "checkpoints": writer.written if writer is not None else [],
               "checkpoint_errors": writer.errors if writer is not None else []}
    final_rows = server.final_rows()
    return finish_real_run(sc, layout, trace, server.snapshots, final_rows, server.stopped, server.stop_time, wall, backend)


@contextmanager
def _collector_frozen() -> Iterator[None]:
    """The run's objects from before the clock starts frozen (`server.freeze_collector`), thawed after."""
    freeze_collector()
    try:
        yield
    finally:
        gc.unfreeze()


def _default_stall(sc: Scenario) -> float:
    slowest = max(g.compute.mean for g in sc.workers)
    return max(5.0, 50 * slowest)


def _supervise(server: RealServer, threads: list[threading.Thread], stall: float,
               update: Callable[[int, float], None] | None) -> None:
    """Wait for the run to end: its update or time limit, or a stall."""
    while not server.done.wait(POLL_S):
        now = server.clock.now()
        if now >= server.until_time:
            server.stop("until_time")
            return
        if update is not None:
            update(server.updates, now)
        if not any(t.is_alive() for t in threads):
            server.stop("stalled")
            return
        restarting = any(f.get("restart_after") is not None and "restarted" not in f for f in server.failures)
        if now - server.last_update_time > stall and not restarting:
            server.stop("stalled")
            return
