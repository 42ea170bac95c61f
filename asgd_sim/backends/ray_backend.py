"""The Ray backend: server shards, a coordinator and the workers as Ray actors, on one machine or many.

``run_ray(scenario, out, address=None)`` starts a local Ray (or joins the cluster at
``address``) and creates:

- one actor per server shard (`backends.shards.ShardHost`): the shard's row, its optimizer state
  and version, and the update itself (the numerics engine's compiled rule);
- one coordinator actor, a threaded actor hosting `backends.server.RealServer` over those shards
  (`backends.shards.ActorShards`): what must be global stays there (the algorithm's rounds,
  buffers and SSP clocks, the lock policy, versions, the trace, checkpoints);
- one actor per worker running `backends.worker.run_worker` against the coordinator.

Parameter and gradient bytes never pass through the coordinator: a worker sends each gradient's
chunk for shard s straight to shard s's actor (inline in the call when small, through Ray's object
store when large) and waits until it is there, then pushes only the gradient's id; the coordinator
tells each shard actor which staged gradients an update applies (and in what order, with which
weights and staleness), and the actor publishes every new row in the object store. A read is a
set of ObjectRefs at the versions the coordinator grants, which the worker fetches from there.

Clocks: each worker measures its offset to the coordinator's monotonic clock once at start (the
midpoint of a round trip, as Cristian's algorithm), so every trace time is on the coordinator's
clock even across machines.

Faults: a worker actor that dies (``ray.kill``, a crashed process, a lost node) is noticed by the
driver; the failure goes into the trace's metadata, the server goes on with the others, and the
scenario's restart policy (``failures.restart_after`` / ``mttr``) starts a fresh actor for it after
the down time, which pulls afresh. An exception inside a worker is handled inside the actor, as in
the devices backend. Shard and coordinator actors are not restarted: losing one ends the run.

Differences from the devices backend: a worker learns that a sync round closed without it by
asking the coordinator (at most every 50 ms, at the same points where a devices worker looks), so
it may notice up to 50 ms late, at its push at the latest. Shard actors keep no past rows: for
DC-ASGD (``optimizer.dc_lambda``) each worker sends its read rows along with its gradient chunks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..scenario.config import Scenario
from ..errors import ScenarioError
from . import check_supported
from .shards import ShardHost

__all__ = ["run_ray", "ray_map", "ensure_ray"]

POLL_S = 0.05


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Import Ray and connect: to ``address`` if given, else to a local Ray started here."""
    try:
        import ray
    except ImportError:
        raise ScenarioError("--backend ray", "needs Ray: pip install 'asgd-sim[ray]' (or pip install 'ray[default]')") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Several worker processes may share one GPU: none may grab most of its memory up front.
            ray.init(num_cpus=num_cpus, runtime_env={"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}, **kwargs)
    return ray


def ray_map(fn: Callable[[Any], Any], items: Iterable[Any], address: str | None = None) -> list[Any]:
    """``[fn(item) for item in items]`` as Ray tasks (e.g. the points of a sweep), in order."""
    ray = ensure_ray(address)
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(item) for item in items])


def _scenario_dict(sc: Scenario) -> dict[str, Any]:
    from ..scenario.files import scenario_to_dict

    return scenario_to_dict(sc)


def _load(tree: dict[str, Any], name: str) -> Scenario:
    from ..scenario.files import scenario_from_dict

    return scenario_from_dict(tree, name=name)


class _ServerHost:
    """The coordinator actor's body: a RealServer whose shards are the shard actors. Reads carry
    ObjectRefs of shard rows; pushes carry gradient ids (the bytes went to the shard actors)."""

    def __init__(self, tree: dict[str, Any], name: str, emulate: bool, out: str | None, resume: bool,
                 shards: list[Any]) -> None:
        from .checkpoint import CheckpointWriter, load_checkpoint
        from ..numerics.problems import build_problem
        from ..numerics.layout import Layout
        from .server import Clock, RealServer
        from .shards import ActorShards

        self.sc = sc = _load(tree, name)
        self.layout = Layout(build_problem(sc, sc.num_workers), sc.server.shards, sc.run.seed)
        ckpt = load_checkpoint(out) if resume else None
        self.offset = ckpt.t if ckpt is not None else 0.0
        self.writer = CheckpointWriter(out) if (sc.server.checkpoint_every and out) else None
        self.store = ActorShards(shards)
        self.server = RealServer(sc, self.layout, emulate=emulate, clock=Clock(self.offset), resume=ckpt,
                                 on_checkpoint=self.writer, store=self.store)
        self.server.warm_up()
        # The row refs of each worker's latest read, held here until its next call: by then it has
        # fetched them. (Ray's borrower bookkeeping alone lost such a row now and then when
        # another worker's actor was killed: ReferenceCountingAssertionError in the reader.)
        self.granted: dict[int, tuple] = {}

    def _grant(self, wid: int, read: Any) -> Any:
        if read is not None and not read.has_params:
            self.granted[wid] = read.rows
        return read

    def start_clock(self) -> float:
        self.server.clock.origin = time.monotonic() - self.offset
        self.server.last_update_time = self.server.clock.now()
        return self.server.clock.now()

    def now(self) -> float:
        return self.server.clock.now()

    def status(self) -> tuple[str, int, float, float]:
        s = self.server
        return s.stopped, s.updates, s.clock.now(), s.last_update_time

    def flags(self, wid: int) -> tuple[str, bool]:
        """Whether the run is over, and whether worker ``wid``'s round closed without it."""
        return self.server.stopped, self.server.slots[wid].cancel.is_set()

    def stop(self, reason: str) -> None:
        self.server.stop(reason)

    def read(self, wid: int, t_pull: float) -> Any:
        try:
            return self._grant(wid, self.server.read(wid, t_pull))
        except Exception:  # noqa: BLE001 - stopped
            return None

    def new_gradients(self, wid: int, count: int, read: Any) -> list[tuple[int, int]]:
        return self.server.new_gradients(wid, count, read)

    def record_compute(self, gid: int, start: float, end: float) -> None:
        self.server.record_compute(gid, start, end)

    def push(self, wid: int, gids: list[int], grads: list[tuple], reads: tuple | None, read: Any) -> Any:
        return self._grant(wid, self.server.push(wid, gids, grads, reads, read))

    def cancel(self, wid: int, gids: list[int]) -> None:
        self.server.cancel(wid, gids)

    def await_broadcast(self, wid: int) -> Any:
        return self._grant(wid, self.server.await_broadcast(wid))

    def worker_failed(self, wid: int, gids: list[int], error: str, restart_after: float | None) -> None:
        self.server.worker_failed(wid, gids, RuntimeError(error), restart_after)

    def worker_restarted(self, wid: int) -> None:
        self.server.worker_restarted(wid)

    def failures(self) -> list[dict[str, Any]]:
        return list(self.server.failures)

    def results(self, extra: dict[str, Any]) -> dict[str, Any]:
        from ..trace import trace_meta

        s = self.server
        if self.writer is not None:
            self.writer.close()
        s.close()
        meta = trace_meta(self.sc, s.stopped, s.stop_time, **extra, failures=s.failures)
        if s.resumed_from is not None:
            meta["resumed_from"] = s.resumed_from
        return {
            "trace": s.freeze(meta), "stopped": s.stopped, "stop_time": s.stop_time, "failures": s.failures,
            "snapshots": [(u, t, s.values(rows), n) for u, t, rows, n in s.snapshots],
            "final_rows": s.values(s.final_rows()), "resumed_from": s.resumed_from,
            "checkpoints": self.writer.written if self.writer is not None else [],
            "server_pid": os.getpid(), "shards": self.store.info(),
        }


class _ServerProxy:
    """What `run_worker` calls, forwarded to the coordinator actor. ``stopped`` and
    ``cancelled()`` (the worker's round closed without it) are asked at most every 50 ms; a call
    that can change the latter (read, push, cancel, await_broadcast) makes the next one ask again."""

    def __init__(self, ray: Any, actor: Any, wid: int) -> None:
        self.ray, self.actor, self.wid = ray, actor, wid
        self._stopped, self._cancelled, self._checked = "", False, 0.0

    def _refresh(self) -> None:
        now = time.monotonic()
        if not self._stopped and now - self._checked > 0.05:
            self._stopped, self._cancelled = self.ray.get(self.actor.flags.remote(self.wid))
            self._checked = now

    @property
    def stopped(self) -> str:
        self._refresh()
        return self._stopped

    def cancelled(self) -> bool:
        self._refresh()
        return self._cancelled

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.actor, name)
        resets = name in ("read", "cancel", "await_broadcast")

        def call(*args: Any) -> Any:
            out = self.ray.get(method.remote(*args))
            if resets:
                self._cancelled, self._checked = False, 0.0
            return out

        return call

    def push(self, wid: int, gids: list[int], grads: list[tuple], reads: tuple | None, read: Any) -> Any:
        from .server import Read

        meta = Read(read.t_pull, read.t_read, read.versions, (), read.has_params)
        out = self.ray.get(self.actor.push.remote(wid, gids, grads, reads, meta))
        self._cancelled, self._checked = False, 0.0
        return out

    def worker_failed(self, wid: int, gids: list[int], error: BaseException, restart_after: float | None) -> None:
        self.ray.get(self.actor.worker_failed.remote(wid, gids, f"{type(error).__name__}: {error}", restart_after))


class _SyncedClock:
    """The server's clock, read locally: monotonic time plus the offset measured at start."""

    def __init__(self, ray: Any, actor: Any) -> None:
        best = math.inf
        for _ in range(5):
            t0 = time.monotonic()
            remote = ray.get(actor.now.remote())
            t1 = time.monotonic()
            if t1 - t0 < best:
                best, self.delta = t1 - t0, remote - (t0 + t1) / 2
        self.rtt = best

    def now(self) -> float:
        return time.monotonic() + self.delta


class _WorkerHost:
    """A worker actor: builds the problem, compiles its gradient, then runs the worker loop.

    It reads shard rows from the object store (ObjectRefs the coordinator grants) and sends each
    gradient's shard chunks straight to the shard actors (`ShardHost.stage`) before it pushes."""

    def __init__(self, tree: dict[str, Any], name: str, wid: int, emulate: bool, server: Any, shards: list[Any]) -> None:
        import jax

        from ..algorithms import make_policy
        from ..numerics.problems import build_problem
        from ..numerics.layout import Layout
        from .updates import RULE_UPDATES
        from .worker import step_functions

        self.sc = sc = _load(tree, name)
        self.wid, self.emulate, self.server, self.shards = wid, emulate, server, shards
        self.layout = Layout(build_problem(sc, sc.num_workers), sc.server.shards, sc.run.seed)
        self.policy = make_policy(sc)
        self.grad, self.payload = step_functions(sc, self.layout, self.policy.model_update)
        # DC-ASGD needs the rows each gradient (or pseudo-gradient) was computed at
        self.dc = sc.optimizer.dc_lambda > 0 and self.policy.model_update in RULE_UPDATES
        rows = tuple(jax.numpy.asarray(r) for r in self.layout.initial)
        jax.block_until_ready(self.grad(rows, np.int32(0), np.int32(0)))
        if self.payload is not None:
            jax.block_until_ready(self.payload(rows, rows))

    def ready(self) -> bool:
        return True

    def _stage(self, gid: int, grad: tuple, rows: tuple) -> tuple:
        """Send each shard its chunk of gradient ``gid`` (with DC-ASGD, also its row the gradient
        was computed at); wait until every shard holds it (so a worker dying after its push loses
        nothing the server counts on)."""
        import ray

        reads = [np.asarray(row) for row in rows] if self.dc else [None] * len(self.shards)
        ray.get([shard.stage.remote(gid, np.asarray(chunk), read) for shard, chunk, read in zip(self.shards, grad, reads)])
        return (gid,) * len(self.shards)

    def run(self, restarted: bool = False, down: float | None = None) -> int:
        import jax
        import ray

        from ..timing.workers import build_workers
        from .worker import WorkerHooks, run_worker

        sc = self.sc
        state = build_workers(sc, sc.network.latency)[self.wid]
        clock = _SyncedClock(ray, self.server)
        proxy = _ServerProxy(ray, self.server, self.wid)
        if restarted:
            state.start = 0.0
            state.failure_times = [t for t in state.failure_times if t > clock.now()]
        hooks = WorkerHooks(
            fetch=lambda rows: jax.block_until_ready(tuple(jax.numpy.asarray(r) for r in ray.get(list(rows)))),
            compute=lambda rows, wid, k: jax.block_until_ready(self.grad(rows, np.int32(wid), np.int32(k))),
            ship=self._stage, cancelled=proxy.cancelled, needs_read=False, payload=self.payload,
        )
        transfer = 0.0 if math.isinf(sc.network.bandwidth) else sc.message_bytes(sc.model.param_bytes or self.layout.problem.param_bytes) * sc.server.shards / sc.network.bandwidth
        run_worker(proxy, state, hooks, emulate=self.emulate, clock=clock, transfer=transfer,
                   local_steps=self.policy.local_steps)
        return self.wid


def run_ray(scenario: Scenario, out: str | Path | None = None, *, address: str | None = None, emulate: bool = False,
            resume: bool = False, num_cpus: int | None = None, on_start: Callable[[list[Any]], None] | None = None,
            stall_after: float | None = None, progress: Callable[[int, float], None] | None = None) -> Any:
    """Run ``scenario`` with Ray actors; returns an `asgd_sim.Result` (``out`` holds its checkpoints).

    ``on_start(worker_actors)`` is called once the workers run (tests kill one from there).
    """
    from ..numerics.problems import build_problem
    from ..results.folder import start_run_folder
    from .finish import finish_real_run
    from ..numerics.layout import Layout

    check_supported(scenario, "ray")
    sc = scenario
    if resume and out is None:
        raise ScenarioError("--resume", "needs --out RUN_DIR, the folder of the run to continue")
    ray = ensure_ray(address, num_cpus)
    out = Path(out) if out is not None else None
    if out is not None:
        start_run_folder(sc, out)
    tree, M = _scenario_dict(sc), sc.num_workers
    # One actor per shard (its row, optimizer state and updates; one call at a time, so no locks),
    # a threaded coordinator (algorithm, locks, trace, checkpoints), one actor per worker.
    Shard = ray.remote(num_cpus=0, max_restarts=0)(ShardHost)
    Server = ray.remote(num_cpus=0, max_concurrency=4 * M + 2 * sc.server.shards + 16)(_ServerHost)
    Worker = ray.remote(num_cpus=0, max_restarts=0)(_WorkerHost)
    shards = [Shard.remote(tree, sc.name, s, bool(sc.server.checkpoint_every)) for s in range(sc.server.shards)]
    server = Server.remote(tree, sc.name, emulate, str(out.resolve()) if out is not None else None, resume, shards)
    workers = [Worker.remote(tree, sc.name, w, emulate, server, shards) for w in range(M)]
    ray.get([w.ready.remote() for w in workers] + [server.now.remote()])
    started = time.perf_counter()
    ray.get(server.start_clock.remote())
    running = {w.run.remote(): wid for wid, w in enumerate(workers)}
    if on_start is not None:
        on_start(workers)
    stall = stall_after if stall_after is not None else max(5.0, 50 * max(g.compute.mean for g in sc.workers))
    restarts: list[tuple[float, int, Any]] = []  # (when, worker, ready) of pending restarts of dead actors
    from ..timing.workers import build_workers

    states = build_workers(sc, sc.network.latency)
    until_time = sc.run.until_time if sc.run.until_time is not None else math.inf
    while True:
        stopped, updates, now, last = ray.get(server.status.remote())
        if stopped:
            break
        if now >= until_time:
            ray.get(server.stop.remote("until_time"))
            break
        ready, _ = ray.wait(list(running), timeout=POLL_S, num_returns=1)
        for ref in ready:
            wid = running.pop(ref)
            try:
                ray.get(ref)
            except Exception as error:  # noqa: BLE001 - the actor died (killed, crashed, node lost)
                down = states[wid].down_time()
                ray.get(server.worker_failed.remote(wid, [], f"actor died: {type(error).__name__}", down))
                if down is not None:  # a fresh actor starts now (a process start takes seconds) ...
                    workers[wid] = Worker.remote(tree, sc.name, wid, emulate, server, shards)
                    restarts.append((now + down, wid, workers[wid].ready.remote()))
        for entry in list(restarts):  # ... and takes over once the down time is over and it is ready
            when, wid, ready_ref = entry
            if now >= when and ray.wait([ready_ref], timeout=0)[0]:
                restarts.remove(entry)
                ray.get(server.worker_restarted.remote(wid))
                running[workers[wid].run.remote(True)] = wid
        if not running and not restarts:
            ray.get(server.stop.remote("stalled"))
            break
        if now - last > stall and not restarts:
            ray.get(server.stop.remote("stalled"))
            break
    ray.wait(list(running), num_returns=len(running), timeout=10)
    wall = time.perf_counter() - started
    got = ray.get(server.results.remote({"backend": "ray", "emulate": emulate}))
    for actor in [*workers, server, *shards]:
        ray.kill(actor)
    layout = Layout(build_problem(sc, M), sc.server.shards, sc.run.seed)
    backend = {"name": "ray", "address": address or "local", "emulate": emulate, "failures": got["failures"],
               "resumed_from": got["resumed_from"], "checkpoints": got["checkpoints"],
               "server_pid": got["server_pid"], "shard_actors": got["shards"]}
    return finish_real_run(sc, layout, got["trace"], got["snapshots"], got["final_rows"], got["stopped"], got["stop_time"], wall, backend)
