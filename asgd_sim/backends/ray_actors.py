"""The bodies of the Ray backend's actors: the coordinator and the workers (a shard's is
`backends.shards.ShardHost`), and what a worker uses to reach the coordinator.

- `CoordinatorHost`: a threaded actor hosting `backends.server.RealServer` over the shard actors
  (`backends.shards.ActorShards`): what must be global (the algorithm's rounds, buffers and SSP
  clocks, the lock policy, versions, the trace, checkpoints). Reads carry ObjectRefs of shard
  rows; pushes carry gradient ids (the bytes went to the shard actors).
- `WorkerHost`: builds the problem, compiles its gradient, then runs `backends.worker.run_worker`
  against the coordinator, as often as the driver asks (after a recovery, against new actors).

Clocks: each run of a worker measures its offset to the coordinator's monotonic clock (the
midpoint of the fastest of five round trips, as Cristian's algorithm), so every trace time is on
the coordinator's clock even across machines.

The driver (`backends.ray_backend.run_ray`) creates these actors, watches them and replaces the
ones that die.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..scenario.config import Scenario

__all__ = ["CoordinatorHost", "WorkerHost", "scenario_tree"]


def scenario_tree(sc: Scenario) -> dict[str, Any]:
    """The scenario as a plain tree (what travels to the actors)."""
    from ..scenario.files import scenario_to_dict

    return scenario_to_dict(sc)


def _load(tree: dict[str, Any], name: str) -> Scenario:
    from ..scenario.files import scenario_from_dict

    return scenario_from_dict(tree, name=name)


def node_of_this_process() -> str:
    """The Ray node id of the calling actor's process (for placement checks and the summary)."""
    import ray

    return ray.get_runtime_context().get_node_id()


class CoordinatorHost:
    """The coordinator actor's body: a RealServer whose shards are the shard actors.

    ``resume``: start from the run folder's latest checkpoint (``out``), as ``--resume`` does and
    as the driver does after losing the coordinator or a shard."""

    def __init__(self, tree: dict[str, Any], name: str, emulate: bool, out: str | None, resume: bool,
                 shards: list[Any]) -> None:
        from ..numerics.layout import Layout
        from ..numerics.problems import build_problem
        from .checkpoint import CheckpointWriter, load_checkpoint
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
        from .server import freeze_collector

        freeze_collector()  # the coordinator's threads serve every worker: no full collections of setup objects
        self.server.clock.origin = time.monotonic() - self.offset
        self.server.last_update_time = self.server.clock.now()
        return self.server.clock.now()

    def now(self) -> float:
        return self.server.clock.now()

    def alive(self) -> str:
        return node_of_this_process()

    def resumed_from(self) -> dict[str, Any] | None:
        return self.server.resumed_from

    def status(self) -> tuple[str, int, float, float, int]:
        """(why it stopped or "", logical updates, clock, last update's time, evaluations taken).
        Under the state lock: a stop and its final evaluation are seen together."""
        s = self.server
        with s.state_lock:
            return s.stopped, s.updates, s.clock.now(), s.last_update_time, len(s.snapshots)

    def snapshots_since(self, first: int) -> list[tuple[int, float, tuple, int]]:
        """The evaluation points from the ``first``-th on: (update, time, row ObjectRefs, update rows)."""
        return list(self.server.snapshots[first:])

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
        """The trace (its metadata: ``extra`` and the failures) and the final rows. (The driver
        collected the evaluation points as they were taken: `snapshots_since`.)"""
        from ..trace import trace_meta

        s = self.server
        if self.writer is not None:
            self.writer.close()
        s.close()
        meta = trace_meta(self.sc, s.stopped, s.stop_time, failures=s.failures)
        if s.resumed_from is not None:
            meta["resumed_from"] = s.resumed_from
        meta.update(extra)
        return {
            "trace": s.freeze(meta), "stopped": s.stopped, "stop_time": s.stop_time, "failures": s.failures,
            "final_rows": s.values(s.final_rows()), "resumed_from": s.resumed_from,
            "checkpoints": self.writer.written if self.writer is not None else [],
            "server_pid": os.getpid(), "server_node": node_of_this_process(), "shards": self.store.info(),
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


class WorkerHost:
    """A worker actor: builds the problem, compiles its gradient, then runs the worker loop.

    It reads shard rows from the object store (ObjectRefs the coordinator grants) and sends each
    gradient's shard chunks straight to the shard actors (`ShardHost.stage`) before it pushes."""

    def __init__(self, tree: dict[str, Any], name: str, wid: int, emulate: bool, server: Any, shards: list[Any]) -> None:
        import jax

        from ..algorithms import make_policy
        from ..numerics.layout import Layout
        from ..numerics.problems import build_problem
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

    def ready(self) -> str:
        """The node this worker runs on (once it is built and compiled)."""
        return node_of_this_process()

    def _stage(self, gid: int, grad: tuple, rows: tuple) -> tuple:
        """Send each shard its chunk of gradient ``gid`` (with DC-ASGD, also its row the gradient
        was computed at); wait until every shard holds it (so a worker dying after its push loses
        nothing the server counts on)."""
        import ray

        reads = [np.asarray(row) for row in rows] if self.dc else [None] * len(self.shards)
        ray.get([shard.stage.remote(gid, np.asarray(chunk), read) for shard, chunk, read in zip(self.shards, grad, reads)])
        return (gid,) * len(self.shards)

    def run(self, restarted: bool = False, server: Any = None, shards: list[Any] | None = None) -> int:
        """Run the worker loop until the run stops (or the worker fails for good). ``restarted``:
        no start delay, and failures scheduled before now are moot. ``server`` and ``shards``
        replace the actors it talks to (after the driver replaced them)."""
        import jax
        import ray

        from ..timing.workers import build_workers
        from .worker import WorkerHooks, run_worker

        if server is not None:
            self.server = server
        if shards is not None:
            self.shards = shards
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
            # The coordinator or a shard is gone (a row's owner included): the driver recovers the
            # run; it is not this worker's crash.
            fatal=(ray.exceptions.RayActorError, ray.exceptions.ObjectLostError),
        )
        transfer = 0.0 if math.isinf(sc.network.bandwidth) else sc.message_bytes(sc.model.param_bytes or self.layout.problem.param_bytes) * sc.server.shards / sc.network.bandwidth
        run_worker(proxy, state, hooks, emulate=self.emulate, clock=clock, transfer=transfer,
                   local_steps=self.policy.local_steps)
        return self.wid
