"""The loop of one real worker: pull, compute a real gradient, push, as the simulator's worker does.

The same loop runs in a thread of the devices backend and inside a Ray worker actor; only the
server handle and the three transfers differ (`fetch` parameters to the worker's device, `compute`
a gradient there, `ship` it to the server). Every timestamp is taken after `block_until_ready`
(docs/STYLE.md: JAX dispatch is asynchronous).

With ``emulate``, the scenario's timing is injected as real delays, drawn from the simulator's own
per-worker streams (`asgd_sim.workers.build_workers`): a gradient takes its sampled compute time
(slowdown windows and pipelines included; the rest of it is slept after the real gradient, and a
real gradient slower than the sample keeps its real time), each message waits one sampled latency
plus the link's transfer time ``message bytes / network.bandwidth`` (the simulator's fair sharing
of the server NIC is not emulated), and the server holds each update for its sampled apply time.
Without it, everything takes the time it really takes.

Failures: any exception in the loop (a crash of the gradient code, or the scenario's
``failures`` injected as a `WorkerCrash` at their times) cancels the work in progress, is recorded
in the trace's metadata, and the worker comes back after the scenario's restart delay (or stays
down), with an explicit pull, as in the simulator.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerCrash", "WorkerHooks", "run_worker", "step_functions"]


def step_functions(scenario: Any, layout: Any, update: str) -> tuple[Callable[[tuple, Any, Any], tuple],
                                                                     Callable[[tuple, tuple], tuple] | None]:
    """What a worker computes for a policy whose pushes are ``update`` (its ``model_update``): the
    jitted (shard rows, worker, k) -> a gradient's shard rows, and no payload; or, for local steps,
    -> the rows after one local SGD step, and the payload (start rows, final rows) -> per shard,
    what the push ships (`asgd_sim.numerics.local`, the simulator's own arithmetic)."""
    if update == "gradient":
        return layout.grad_fn(), None
    from ..numerics.local import local_rate, local_step_fn, push_payload

    lr = local_rate(scenario)
    return local_step_fn(layout, lr), lambda origin, final: tuple(push_payload(update, o, f, lr) for o, f in zip(origin, final))


class WorkerCrash(RuntimeError):
    """A failure the scenario injects (``workers[].failures``) at a given time."""


class _Cancelled(Exception):
    """The worker's round closed without it (sync kinds): its work is discarded."""


class _Over(Exception):
    """The run is over."""


@dataclass
class WorkerHooks:
    """How one worker talks to its server and its device.

    fetch(rows) -> rows on the worker's device (blocks until there); compute(rows, worker, k) ->
    the gradient's shard rows (blocks until computed); ship(gid, grads, rows) -> per shard, what the
    server's push takes for gradient ``gid``, computed at ``rows`` (blocks until the bytes are where
    the shard lives). With ``payload`` the worker takes local steps (local SGD, EASGD, FedBuff,
    FedAsync): compute(rows, worker, k) is one local SGD step (the new shard rows), and a push
    ships once, under its first gradient id, payload(start rows, final rows): what the server's
    update needs (`asgd_sim.numerics.local.push_payload`). cancelled() says whether the worker's round closed without it (the
    devices backend checks it while it sleeps; None: noticed at the push). inject(worker, k) runs
    before each gradient (tests raise from it to crash a worker). ``fatal``: exceptions that end the
    loop (raised out of `run_worker`) instead of counting as the worker's crash: the Ray backend's
    "the coordinator or a shard actor is gone", which its driver recovers from.
    """

    fetch: Callable[[tuple], Any]
    compute: Callable[[Any, int, int], tuple]
    ship: Callable[[int, tuple, tuple], Any]
    cancelled: Callable[[], bool] | None = None
    inject: Callable[[int, int], None] | None = None
    needs_read: bool = False
    payload: Callable[[Any, Any], Any] | None = None
    fatal: tuple[type[BaseException], ...] = ()


class _Schedule:
    """The worker's emulated timing and injected failures (see the module docstring)."""

    def __init__(self, state: Any, emulate: bool, transfer: float, clock: Any, hooks: WorkerHooks, server: Any) -> None:
        self.w, self.emulate, self.transfer, self.clock, self.hooks, self.server = state, emulate, transfer, clock, hooks, server
        self.fail_at = iter(state.failure_times)
        self.next_failure = self._draw_failure(0.0)
        self.wake = threading.Event()  # never set: Event.wait is an interruptible sleep

    def _draw_failure(self, now: float) -> float:
        if self.w.mtbf is not None:
            return now + float(self.w.failure_rng.exponential(self.w.mtbf))
        return float(next(self.fail_at, math.inf))

    def after_restart(self, now: float) -> None:
        if self.w.mtbf is not None:
            self.next_failure = self._draw_failure(now)  # the next gap counts from the restart
        else:
            while self.next_failure <= now:  # listed failures that fell in the down period are moot
                self.next_failure = self._draw_failure(now)

    def check(self) -> None:
        now = self.clock.now()
        if self.server.stopped:
            raise _Over
        if now >= self.next_failure:
            at = self.next_failure
            self.next_failure = math.inf if self.w.mtbf is not None else self._draw_failure(now)
            raise WorkerCrash(f"worker {self.w.wid}: injected failure at t={at:.4g}s")
        if self.hooks.cancelled is not None and self.hooks.cancelled():
            raise _Cancelled

    def nap_until(self, t: float) -> None:
        """Sleep until ``t``, waking for a failure, a cancelled round or the end of the run."""
        while True:
            self.check()
            now = self.clock.now()
            if now >= t:
                return
            self.wake.wait(min(t, self.next_failure) - now if self.next_failure > now else 0.0)
            if self.hooks.cancelled is not None and self.hooks.cancelled():
                raise _Cancelled

    def message(self) -> None:
        """One message on the worker's link: latency plus transfer time (emulate only)."""
        if self.emulate:
            self.nap_until(self.clock.now() + self.w.latency() + self.transfer)

    def compute_until(self, start: float) -> float:
        """When the gradient started at ``start`` ends in the emulated cluster."""
        return self.w.slowdowns.finish(start, self.w.step_time(self.w.compute(), math.inf))


def run_worker(server: Any, state: Any, hooks: WorkerHooks, *, emulate: bool, clock: Any, local_steps: int = 1,
               transfer: float = 0.0) -> None:
    """Run worker ``state.wid`` until the server stops (or it fails for good).

    ``server`` has the `RealServer` interface (read, new_gradients, record_compute, push, cancel,
    await_broadcast, worker_failed, worker_restarted, stopped); ``state`` is the worker's
    `asgd_sim.workers.WorkerState` (samplers, slowdowns, failure schedule).
    """
    wid = state.wid
    sched = _Schedule(state, emulate, transfer, clock, hooks, server)
    next_read = None
    local = None  # the parameters on the worker's device
    try:
        if state.start > 0:
            sched.nap_until(state.start)
        while not server.stopped:
            gids: list[int] = []
            try:
                sched.check()
                if next_read is None:  # explicit pull: the request travels to the server
                    t_pull = clock.now()
                    sched.message()
                    next_read = server.read(wid, t_pull)
                    if next_read is None:  # the run is over
                        return
                read, next_read = next_read, None
                pairs = server.new_gradients(wid, local_steps, read)
                gids = [gid for gid, _ in pairs]
                if not read.has_params or local is None:
                    sched.message()  # the parameters travel back
                    local = hooks.fetch(read.rows)
                grads, point = [], local
                for gid, k in pairs:
                    start = clock.now()
                    if hooks.inject is not None:
                        hooks.inject(wid, k)
                    out = hooks.compute(point, wid, k)
                    if emulate:
                        sched.nap_until(sched.compute_until(start))
                    else:
                        sched.check()
                    server.record_compute(gid, start, clock.now())
                    if hooks.payload is None:
                        grads.append(hooks.ship(gid, out, local))
                    else:  # a local step: the next one starts where it ended
                        point = out
                if hooks.payload is not None:
                    grads.append(hooks.ship(gids[0], hooks.payload(local, point), local))
                sched.message()  # the push travels to the server
                sched.check()
                next_read = server.push(wid, gids, grads, read.rows if hooks.needs_read else None, read)
            except _Cancelled:
                server.cancel(wid, gids)
                next_read = server.await_broadcast(wid)
            except _Over:
                return
            except hooks.fatal:
                raise
            except Exception as error:  # noqa: BLE001 - a crash of any kind takes the worker down
                if server.stopped:
                    return
                down = state.down_time()
                server.worker_failed(wid, gids, error, down)
                if down is None:
                    return
                _sleep(clock, server, clock.now() + down)
                if server.stopped:
                    return
                sched.after_restart(clock.now())
                server.worker_restarted(wid)
                next_read = local = None
    except _Over:
        return


def _sleep(clock: Any, server: Any, t: float) -> None:
    wake = threading.Event()
    while not server.stopped:
        left = t - clock.now()
        if left <= 0:
            return
        wake.wait(min(left, 0.1))

