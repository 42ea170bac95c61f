"""The Ray backend: server shards, a coordinator and the workers as Ray actors, on one machine or many.

``run_ray(scenario, out, address=None)`` starts a local Ray (or joins the cluster at
``address``) and creates (`backends.ray_actors`):

- one actor per server shard (`backends.shards.ShardHost`): the shard's row, its optimizer state
  and version, and the update itself (the numerics engine's compiled rule);
- one coordinator actor, a threaded actor hosting `backends.server.RealServer` over those shards
  (`backends.shards.ActorShards`): what must be global stays there (the algorithm's rounds,
  buffers and SSP clocks, the lock policy, versions, the trace, checkpoints);
- one actor per worker running `backends.worker.run_worker` against the coordinator.

Shard and worker actors are spread over the cluster's nodes: shard s and worker w go to the
(s mod N)-th and (w mod N)-th of the N living nodes that offer CPUs or GPUs (a head started with
``--num-cpus=0`` is left alone), counted afresh whenever an actor is replaced, so a replacement
goes to a living node. (Ray's "SPREAD" and soft node affinity both left actors that need no CPU
on the driver's node.)
The coordinator goes where Ray places it (usually the driver's node). The driver (this process)
watches them all.

Parameter and gradient bytes never pass through the coordinator: a worker sends each gradient's
chunk for shard s straight to shard s's actor (inline in the call when small, through Ray's object
store when large) and waits until it is there, then pushes only the gradient's id; the coordinator
tells each shard actor which staged gradients an update applies (and in what order, with which
weights and staleness), and the actor publishes every new row in the object store. A read is a
set of ObjectRefs at the versions the coordinator grants, which the worker fetches from there. The
driver fetches the rows of each evaluation point as it is taken (every ``run.eval_every``
updates), so the evaluations already taken survive the loss of the actors that hold them.

Faults:

- A worker actor that dies (``ray.kill``, a crashed process, a lost node) is noticed by the
  driver; the failure goes into the trace's metadata, the server goes on with the others, and the
  scenario's restart policy (``failures.restart_after`` / ``mttr``) starts a fresh actor for it
  after the down time, which pulls afresh. An exception inside a worker is handled inside the
  actor, as in the devices backend.
- A coordinator or shard actor that dies is noticed by the driver (the coordinator at its next
  status call, within 50 ms; a shard by a ping every 0.5 s, or at once when a worker's call to it
  fails). The run is then *recovered*: the driver kills the coordinator and the workers' loops
  end; a fresh coordinator starts from the run's latest checkpoint (``server.checkpoint_every``,
  in ``out``; without one, from update 0), with the living shard actors reloaded from it and a new
  actor for each dead one; the living workers run again against the new actors, and those that
  died follow the restart policy. The run is then exactly a ``--resume`` from that checkpoint: the
  updates after it are dropped (not replayed: the gradients they applied died with the shard rows
  and the coordinator's state; the workers compute new ones at the restored parameters), the
  gradients in flight at it are cancelled, the trace clock goes on from the checkpoint's time (the
  dropped stretch and the outage are not in the trace: ``wall_time_s`` has them), and the worker
  failures recorded after it go with the trace. A replay of the finished run still reproduces its
  parameters. Each recovery is listed in the trace metadata and ``summary.json``
  (``backend.recoveries``: what was lost, when, at which update, from which checkpoint). After
  ``MAX_RECOVERIES`` the run gives up with an error naming the checkpoint to ``--resume`` from.
- The driver itself is not recovered: it owns the actors, so they die with it; ``asgd-sim run
  ... --resume --out RUN_DIR`` continues from the latest checkpoint.

Differences from the devices backend: a worker learns that a sync round closed without it by
asking the coordinator (at most every 50 ms, at the same points where a devices worker looks), so
it may notice up to 50 ms late, at its push at the latest. Shard actors keep no past rows: for
DC-ASGD (``optimizer.dc_lambda``) each worker sends its read rows along with its gradient chunks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScenarioError
from ..scenario.config import Scenario
from . import check_supported
from .checkpoint import POINTER
from .ray_actors import CoordinatorHost, WorkerHost, scenario_tree
from .shards import ShardHost

__all__ = ["MAX_RECOVERIES", "RayActors", "run_ray", "ray_map", "ensure_ray"]

POLL_S = 0.05
PING_EVERY_S = 0.5  # how often the driver asks the shard actors whether they live
ANSWER_S = 30.0  # an actor that does not answer a ping within this is taken for lost
MAX_RECOVERIES = 10  # losses of the coordinator or a shard one run survives


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Import Ray and connect: to ``address`` if given, else to a local Ray started here."""
    try:
        import ray
    except ImportError:
        raise ScenarioError("--backend ray", "needs Ray: pip install 'asgd-sim[ray]' (or pip install ray)") from None
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


@dataclass
class RayActors:
    """The actors of a Ray run now (the driver replaces entries as it replaces actors), and the
    Ray node each runs on: ``nodes["coordinator"]``, ``nodes["shards"][s]``, ``nodes["workers"][w]``."""

    coordinator: Any
    shards: list[Any]
    workers: list[Any] = field(default_factory=list)
    nodes: dict[str, Any] = field(default_factory=dict)


class _Lost(Exception):
    """The coordinator or a shard actor is gone (killed, crashed, its node lost)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def run_ray(scenario: Scenario, out: str | Path | None = None, *, address: str | None = None, emulate: bool = False,
            resume: bool = False, num_cpus: int | None = None, on_start: Callable[[RayActors], None] | None = None,
            stall_after: float | None = None, progress: Callable[[int, float], None] | None = None) -> Any:
    """Run ``scenario`` with Ray actors; returns an `asgd_sim.Result` (``out`` holds its checkpoints).

    ``on_start(actors)`` is called once the workers run, with the `RayActors` of the run, kept
    current as actors are replaced (tests kill actors from there).
    """
    from ..numerics.layout import Layout
    from ..numerics.problems import build_problem
    from ..results.folder import start_run_folder
    from .finish import finish_real_run

    check_supported(scenario, "ray")
    if resume and out is None:
        raise ScenarioError("--resume", "needs --out RUN_DIR, the folder of the run to continue")
    ray = ensure_ray(address, num_cpus)
    out = Path(out) if out is not None else None
    if out is not None:
        start_run_folder(scenario, out)
    run = _Driver(ray, scenario, out, emulate=emulate, resume=resume, stall_after=stall_after, progress=progress)
    try:
        run.start(resume)
        if on_start is not None:
            on_start(run.actors)
        got = run.finish()
    finally:
        run.kill_all()
    backend = {"name": "ray", "address": address or "local", "emulate": emulate, "failures": got["failures"],
               "resumed_from": run.resumed_from, "recoveries": run.recoveries, "checkpoints": got["checkpoints"],
               "server_pid": got["server_pid"], "server_node": got["server_node"], "shard_actors": got["shards"],
               "worker_nodes": run.actors.nodes.get("workers")}
    layout = Layout(build_problem(scenario, scenario.num_workers), scenario.server.shards, scenario.run.seed)
    snapshots = [(update, t, rows, n) for update, (t, rows, n) in sorted(run.evaluations.items())]
    return finish_real_run(scenario, layout, got["trace"], snapshots, got["final_rows"], got["stopped"], got["stop_time"],
                           time.perf_counter() - run.started, backend)


class _Driver:
    """Creates the actors, watches them until the run stops, and recovers the run when the
    coordinator or a shard is lost (see the module docstring)."""

    def __init__(self, ray: Any, sc: Scenario, out: Path | None, *, emulate: bool, resume: bool,
                 stall_after: float | None, progress: Callable[[int, float], None] | None) -> None:
        from ..timing.workers import build_workers

        self.ray, self.sc, self.out, self.emulate, self.progress = ray, sc, out, emulate, progress
        self.tree = scenario_tree(sc)
        self.out_text = str(out.resolve()) if out is not None else None
        M, S = sc.num_workers, sc.server.shards
        # One actor per shard (its row, optimizer state and updates; one call at a time, so no
        # locks), a threaded coordinator (algorithm, locks, trace, checkpoints), one per worker.
        self.Shard = ray.remote(num_cpus=0, max_restarts=0)(ShardHost)
        self.Coordinator = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=4 * M + 2 * S + 16)(CoordinatorHost)
        self.Worker = ray.remote(num_cpus=0, max_restarts=0)(WorkerHost)
        self.states = build_workers(sc, sc.network.latency)
        self.stall = stall_after if stall_after is not None else max(5.0, 50 * max(g.compute.mean for g in sc.workers))
        self.until_time = sc.run.until_time if sc.run.until_time is not None else math.inf
        self.nodes = self._living_nodes()
        self.actors = RayActors(None, [self._new_shard(s) for s in range(S)])
        self.running: dict[Any, int] = {}  # the run call of each working worker -> its id
        self.restarts: list[tuple[float, int, Any]] = []  # (when, worker, ready) of pending restarts of dead actors
        self.down: set[int] = set()  # workers down for good
        self.rerun: set[int] = set()  # during a recovery: living workers to run again ...
        self.replace: dict[int, BaseException] = {}  # ... and dead ones, with what killed them
        self.evaluations: dict[int, tuple[float, tuple, int]] = {}  # update -> (time, rows, update rows so far)
        self.taken = 0  # evaluation points collected from the current coordinator
        self.recoveries: list[dict[str, Any]] = []
        self.resumed_from: dict[str, Any] | None = None
        self.now, self.updates, self.pings, self.next_ping, self.took_over = 0.0, 0, {}, 0.0, 0.0
        self.resume = resume
        # A checkpoint left in `out` by an earlier run is never recovered from (only this run's own)
        self.stale_pointer = None if resume else self._pointer()
        self.started = time.perf_counter()

    def _living_nodes(self) -> list[str]:
        """The ids of the living nodes that offer CPUs or GPUs (all living nodes if none do), sorted."""
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        working = [n for n in alive if n.get("Resources", {}).get("CPU", 0) > 0 or n.get("Resources", {}).get("GPU", 0) > 0]
        return sorted(n["NodeID"] for n in (working or alive))

    def _on_node(self, index: int) -> Any:
        """Scheduling on the (index mod N)-th living node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(self.nodes[index % len(self.nodes)], soft=False)

    def _new_shard(self, s: int) -> Any:
        return self.Shard.options(scheduling_strategy=self._on_node(s)).remote(
            self.tree, self.sc.name, s, bool(self.sc.server.checkpoint_every))

    def _new_worker(self, wid: int) -> Any:
        return self.Worker.options(scheduling_strategy=self._on_node(wid)).remote(
            self.tree, self.sc.name, wid, self.emulate, self.actors.coordinator, self.actors.shards)

    def _pointer(self) -> str | None:
        path = self.out / "checkpoints" / POINTER if self.out is not None else None
        return path.read_text() if path is not None and path.is_file() else None

    # ---- starting -------------------------------------------------------------------------------

    def start(self, resume: bool) -> None:
        """Create the coordinator and the workers (the shards exist), wait until they are ready,
        start the clock and the workers' loops."""
        ray, a = self.ray, self.actors
        a.coordinator = self.Coordinator.remote(self.tree, self.sc.name, self.emulate, self.out_text, resume, a.shards)
        a.workers = [self._new_worker(w) for w in range(self.sc.num_workers)]
        *nodes, coordinator_node = ray.get([w.ready.remote() for w in a.workers] + [a.coordinator.alive.remote()])
        self.resumed_from = ray.get(a.coordinator.resumed_from.remote())
        a.nodes = {"coordinator": coordinator_node, "workers": nodes,
                   "shards": ray.get([shard.alive.remote() for shard in a.shards])}
        ray.get(a.coordinator.start_clock.remote())
        self.running = {w.run.remote(): wid for wid, w in enumerate(a.workers)}

    # ---- watching -------------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Watch the run until it stops, recovering it as often as needed; its results."""
        while True:
            try:
                while not self._step():
                    pass
                return self._results()
            except _Lost as lost:
                self._recover(lost.what)

    def _ask(self, ref: Any, what: str) -> Any:
        """``ray.get(ref)`` of a call to the coordinator or a shard (``what``); `_Lost` if it is gone."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:
            raise _Lost(what) from error

    def _step(self) -> bool:
        """One look at the run (every 50 ms); True once it has stopped."""
        ray, a = self.ray, self.actors
        stopped, self.updates, self.now, last, taken = self._ask(a.coordinator.status.remote(), "the coordinator")
        if taken > self.taken:
            self._collect()
        if stopped:
            return True
        if self.progress is not None:
            self.progress(self.updates, self.now)
        if self.now >= self.until_time:
            return self._stop("until_time")
        self._watch_shards()
        ready, _ = ray.wait(list(self.running), timeout=POLL_S, num_returns=1)
        for ref in ready:  # (a ref leaves `running` once handled: if the coordinator is lost meanwhile,
            wid = self.running[ref]  # the recovery finds it there and reruns or replaces the worker)
            try:
                ray.get(ref)
                self.down.add(wid)  # its loop ended while the run goes on: it failed for good
            except ray.exceptions.RayTaskError as error:  # the worker lives: something it called is gone?
                self._find_lost()
                self._worker_died(wid, error)
            except ray.exceptions.RayActorError as error:  # the worker's actor died (killed, crashed, node lost)
                self._worker_died(wid, error)
            del self.running[ref]
        for entry in list(self.restarts):  # a fresh actor takes over once the down time is over and it is ready
            when, wid, ready_ref = entry
            if self.now >= when and ray.wait([ready_ref], timeout=0)[0]:
                try:
                    node = ray.get(ready_ref)
                except ray.exceptions.RayActorError as error:  # the fresh actor died too
                    self._worker_died(wid, error)
                    self.restarts.remove(entry)
                    continue
                self._ask(a.coordinator.worker_restarted.remote(wid), "the coordinator")
                self.restarts.remove(entry)
                a.nodes["workers"][wid] = node
                self.running[a.workers[wid].run.remote(True, a.coordinator, a.shards)] = wid
                self.took_over = self.now
        if not self.running and not self.restarts:
            return self._stop("stalled")
        # (a worker that just took over has had no time to update yet: the stall clock restarts)
        if self.now - max(last, self.took_over) > self.stall and not self.restarts:
            return self._stop("stalled")
        return False

    def _stop(self, reason: str) -> bool:
        self._ask(self.actors.coordinator.stop.remote(reason), "the coordinator")
        return False  # (the next step collects the final evaluation and sees the stop)

    def _collect(self) -> None:
        """Fetch the evaluation points taken since the last call (their rows, as numpy copies)."""
        ray, S = self.ray, self.sc.server.shards
        points = self._ask(self.actors.coordinator.snapshots_since.remote(self.taken), "the coordinator")
        try:
            values = ray.get([ref for _, _, rows, _ in points for ref in rows])
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as error:
            self._find_lost()
            raise RuntimeError("an evaluation's rows were lost while every actor answers") from error
        for i, (update, t, _, n) in enumerate(points):
            self.evaluations[int(update)] = (float(t), tuple(np.array(v) for v in values[i * S:(i + 1) * S]), int(n))
        self.taken += len(points)

    def _watch_shards(self) -> None:
        """Ask every shard actor whether it lives, every 0.5 s (answers are read without waiting)."""
        ray = self.ray
        if self.pings:
            ready, _ = ray.wait(list(self.pings), num_returns=len(self.pings), timeout=0)
            for ref in ready:
                what = self.pings.pop(ref)
                self._ask(ref, what)
        if not self.pings and time.monotonic() >= self.next_ping:
            self.pings = {shard.alive.remote(): f"shard {s}" for s, shard in enumerate(self.actors.shards)}
            self.next_ping = time.monotonic() + PING_EVERY_S

    def _find_lost(self) -> None:
        """Raise `_Lost` naming the coordinator or a shard if one is gone (or does not answer)."""
        a = self.actors
        probes = {a.coordinator.alive.remote(): "the coordinator",
                  **{shard.alive.remote(): f"shard {s}" for s, shard in enumerate(a.shards)}}
        ready, silent = self.ray.wait(list(probes), num_returns=len(probes), timeout=ANSWER_S)
        for ref in ready:
            self._ask(ref, probes[ref])
        if silent:
            raise _Lost(f"{probes[silent[0]]} (no answer in {ANSWER_S:g} s)")

    def _worker_died(self, wid: int, error: BaseException) -> None:
        """Record a dead worker actor; the restart policy starts a fresh one after its down time."""
        down = self.states[wid].down_time()
        a = self.actors
        self._ask(a.coordinator.worker_failed.remote(wid, [], f"actor died: {type(error).__name__}", down), "the coordinator")
        self.ray.kill(a.workers[wid], no_restart=True)  # (if it still lives)
        self.nodes = self._living_nodes()
        if down is None:
            self.down.add(wid)
            return
        a.workers[wid] = self._new_worker(wid)  # a fresh actor starts now (a process start takes seconds) ...
        self.restarts.append((self.now + down, wid, a.workers[wid].ready.remote()))

    def _results(self) -> dict[str, Any]:
        if self.running:
            self.ray.wait(list(self.running), num_returns=len(self.running), timeout=10)
        extra = {"backend": "ray", "emulate": self.emulate, "recoveries": self.recoveries}
        if self.recoveries:  # (the trace's own `resumed_from` says where the last recovery started)
            extra["resumed_from"] = self.resumed_from
        return self._ask(self.actors.coordinator.results.remote(extra), "the coordinator")

    # ---- recovering -----------------------------------------------------------------------------

    def _recover(self, what: str) -> None:
        """The coordinator or a shard is lost: start the run again from its latest checkpoint."""
        while True:
            if len(self.recoveries) >= MAX_RECOVERIES:
                where = f" with --resume --out {self.out}" if self.out is not None else ""
                raise ScenarioError("--backend ray", f"the run lost its coordinator or a shard actor {MAX_RECOVERIES} times "
                                    f"(last: {what}); giving up. Check the cluster's nodes, then continue from the latest "
                                    f"checkpoint{where}")
            began = time.monotonic()
            record: dict[str, Any] = {"lost": what, "t": round(self.now, 6), "updates": self.updates}
            self.recoveries.append(record)
            try:
                record["from_update"] = self._restart()
                record["recovery_wall_s"] = round(time.monotonic() - began, 3)
                return
            except _Lost as again:
                what = f"{again.what} (while recovering)"

    def _restart(self) -> int:
        """Replace the coordinator (and every dead shard), rerun the workers; the update it resumes from."""
        ray, a = self.ray, self.actors
        old, old_now = a.coordinator, self.now
        ray.kill(old, no_restart=True)
        living = self._answering(a.shards)
        self.nodes = self._living_nodes()
        for s, alive in enumerate(living):
            if not alive:
                ray.kill(a.shards[s], no_restart=True)
                a.shards[s] = self._new_shard(s)
        self._wait_dead(old)  # (so its checkpoint writer is gone before the new one reads)
        # The workers' loops end at their next call to the old coordinator.
        done, hung = ray.wait(list(self.running), num_returns=len(self.running), timeout=ANSWER_S) if self.running else ([], [])
        # (What to do with each worker is kept on `self` until done: this attempt may fail.)
        for ref in done:
            wid = self.running[ref]
            try:
                ray.get(ref)
                self.rerun.add(wid)
            except ray.exceptions.RayTaskError:
                self.rerun.add(wid)
            except ray.exceptions.RayActorError as error:
                self.replace[wid] = error
        for ref in hung:  # a loop stuck in a call that never fails: a fresh actor instead
            wid = self.running[ref]
            ray.kill(a.workers[wid], no_restart=True)
            a.workers[wid] = self._new_worker(wid)
            self.rerun.add(wid)
        self.running, self.pings = {}, {}
        pointer = self._pointer()
        resume = pointer is not None and (self.resume or pointer != self.stale_pointer)
        a.coordinator = self.Coordinator.remote(self.tree, self.sc.name, self.emulate, self.out_text, resume, a.shards)
        try:
            a.nodes["coordinator"] = ray.get(a.coordinator.alive.remote())
        except ray.exceptions.RayActorError as error:  # it could not start: a shard died meanwhile?
            self._find_lost()
            raise _Lost(f"the new coordinator (could not start: {str(error).strip().splitlines()[-1][:200]})") from error
        resumed = self._ask(a.coordinator.resumed_from.remote(), "the coordinator")
        start = int(resumed["updates"]) if resumed is not None else 0
        a.nodes["shards"] = self._answering(a.shards, nodes=True)
        self.evaluations = {u: e for u, e in self.evaluations.items() if u <= start}  # the rest was rolled back
        self.taken = 0
        rerun = sorted(self.rerun - set(self.replace))
        ready = [a.workers[wid].ready.remote() for wid in rerun]
        try:
            nodes = ray.get(ready)
        except ray.exceptions.RayActorError:  # a worker died meanwhile: its run fails, the driver sees it
            nodes = [None] * len(rerun)
        for wid, node in zip(rerun, nodes):
            a.nodes["workers"][wid] = node
        self.now = self.took_over = self._ask(a.coordinator.start_clock.remote(), "the coordinator")
        pending, self.restarts = self.restarts, []
        dead, self.rerun, self.replace = self.replace, set(), {}
        # The restored coordinator counts every worker alive: tell it which are not.
        for wid in sorted(self.down):
            self._ask(a.coordinator.worker_failed.remote(wid, [], "down when the run was recovered", None), "the coordinator")
        for when, wid, ready_ref in pending:
            left = max(0.0, when - old_now)
            self._ask(a.coordinator.worker_failed.remote(wid, [], "restarting when the run was recovered", left),
                      "the coordinator")
            self.restarts.append((self.now + left, wid, ready_ref))
        for wid, error in dead.items():
            self._worker_died(wid, error)
        for wid in rerun:
            self.running[a.workers[wid].run.remote(True, a.coordinator, a.shards)] = wid
        return start

    def _answering(self, actors: list[Any], nodes: bool = False) -> list[Any]:
        """Per actor, whether it answers a ping within `ANSWER_S` (``nodes``: its node id, or None)."""
        refs = [actor.alive.remote() for actor in actors]
        self.ray.wait(refs, num_returns=len(refs), timeout=ANSWER_S)
        out = []
        for ref in refs:
            try:
                node = self.ray.get(ref, timeout=0)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError):
                node = None
            out.append(node if nodes else node is not None)
        return out

    def _wait_dead(self, actor: Any) -> None:
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline:
            try:
                self.ray.get(actor.alive.remote(), timeout=1.0)
            except self.ray.exceptions.RayActorError:
                return
            except self.ray.exceptions.GetTimeoutError:
                pass
            time.sleep(0.05)

    def kill_all(self) -> None:
        a = self.actors
        for actor in [*a.workers, a.coordinator, *a.shards]:
            if actor is not None:
                self.ray.kill(actor)
