"""A worker's iteration as a chain of stages, for workers whose times depend on other workers.

A worker whose messages cross fairly shared links (finite bandwidth), or whose computations share
a device (``workers[].device``), goes through its iteration as stages: the response latency and
the parameters' transfer (unless it keeps the parameters it holds), each local step's computation,
then the push latency and the gradient's transfer. A transfer is a group of flows (one per shard)
and a computation on a device is a flow of its work (seconds at full speed) at most at full speed,
both in the `FairShare` of `timing.network`. Stages are evaluated as far ahead as their times are
known: a free group's end is known when it starts, so an iteration whose groups are all free is
laid out at once and its worker waits on one timeout, its arrival, exactly as on the fast path. A
group that is not free (or stops being free: `delayed`) holds the chain until it finishes; the
stages laid out after it are withdrawn (their groups cancelled, their compute stamps cleared) and
the worker's process is re-pointed at an event not yet due.

With transfers, random draws are read ahead (`Sampler.peek`) and taken when their stage would have
drawn them in a step-by-step loop (a computation's work when it starts, the push latency when the
computation ends), so an iteration cut short by a failure or a stop consumes exactly what that
loop would; without, all are drawn as the iteration starts, as on the fast path. Likewise a stop
interrupts a worker whose iteration has transfers, and detaches one whose iteration has none
from the event it waits on, as on the fast path (`loops.ProcessLoop.stop`).
"""

from __future__ import annotations

import math
from typing import Any

import simpy

from ..trace import TraceBuilder
from .events import Timeout
from .network import FREE, FairShare, Group, Route
from .workers import WorkerState

__all__ = ["Routes", "Context", "Iteration"]

_NAN = math.nan
# The stages of an iteration, in order: the response latency, the parameters' transfer, the
# computations (_COMPUTE + i for local step i), the push latency, the gradient's transfer.
_LATENCY, _PULL, _PUSH_LATENCY, _PUSH, _COMPUTE = range(5)


class Routes:
    """A worker's routes: parameters from the server, gradients to it (None: no transfer time),
    its computations on its device (None: on no shared device); and the stage plans they make."""

    __slots__ = ("pull", "push", "device", "plans")

    def __init__(self, pull: Route | None, push: Route | None, device: Route | None) -> None:
        self.pull, self.push, self.device = pull, push, device
        self.plans: dict[tuple[bool, int], tuple[int, ...]] = {}

    def plan(self, fresh: bool, steps: int) -> tuple[int, ...]:
        """The stages of an iteration of ``steps`` computations, after a fresh read or not."""
        key = (fresh, steps)
        plan = self.plans.get(key)
        if plan is None:
            first = ((_LATENCY,) + ((_PULL,) if self.pull is not None else ())) if fresh else ()
            plan = first + tuple(_COMPUTE + i for i in range(steps)) + (_PUSH_LATENCY,) + ((_PUSH,) if self.push is not None else ())
            self.plans[key] = plan
        return plan


class Context:
    """What every iteration of one engine shares."""

    __slots__ = ("env", "shares", "trace", "message", "bandwidth")

    def __init__(self, env: simpy.Environment, shares: FairShare, trace: TraceBuilder, message: float, bandwidth: float) -> None:
        self.env, self.shares, self.trace, self.message, self.bandwidth = env, shares, trace, message, bandwidth


class Iteration:
    """The iterations of worker ``w``, one at a time: `begin` lays out one computing ``gids``, from
    now to its arrival at the server, and returns the event its process waits on (the arrival's
    timeout once it is known, an event not yet due before). The process sets ``waiting`` as it
    yields it, and calls `arrived` when it resumes.
    """

    __slots__ = ("ctx", "w", "gids", "plan", "lat", "works", "groups", "event", "waiting")

    def __init__(self, ctx: Context, w: WorkerState) -> None:
        self.ctx, self.w = ctx, w
        self.groups: dict[int, Group] = {}
        self.gids: list[int] = []
        self.event: simpy.Event | None = None
        self.waiting = False

    def begin(self, gids: list[int]) -> simpy.Event:
        w = self.w
        self.gids, self.waiting, self.event = gids, False, None
        steps, routes = len(gids), w.routes
        if w.has_params:
            w.has_params = False
            self.plan = routes.plans.get((False, steps)) or routes.plan(False, steps)
            response = 0.0
        else:
            self.plan = routes.plans.get((True, steps)) or routes.plan(True, steps)
            response = w.latency()  # (drawn now: the response starts now)
        compute = w.compute
        if routes.pull is not None:  # transfers: draws taken as their stages start (see the module docstring)
            self.works = [compute.peek()] if steps == 1 else [compute.peek(i) for i in range(steps)]
            self.lat = (response, w.latency.peek())
        else:  # as on the fast path: all drawn as the iteration starts
            self.works = [compute() for _ in range(steps)]
            self.lat = (response, w.latency())
        self._run(0, self.ctx.env._now)  # type: ignore[attr-defined]
        if self.event is None:
            self.event = self.ctx.env.event()
        return self.event

    # ---- laying out the stages ----------------------------------------------------------------

    def _run(self, k: int, t: float) -> None:
        """Lay out the stages from ``k`` on, the first starting at ``t``, as far as they are known."""
        plan, w, ctx, groups = self.plan, self.w, self.ctx, self.groups
        routes = w.routes
        for k in range(k, len(plan)):
            code = plan[k]
            if code == _LATENCY:
                t += self.lat[0]
            elif code == _PUSH_LATENCY:
                t += self.lat[1]
            elif code < _COMPUTE:  # a message
                groups[k] = group = ctx.shares.start(routes.pull if code == _PULL else routes.push, ctx.message, t, self, k)
                if group.state != FREE:
                    return  # `finished` goes on from here
                t = group.end  # type: ignore[assignment]
            else:
                i = code - _COMPUTE
                gid, tr = self.gids[i], ctx.trace
                work = self.works[i] if w.pipeline is None else w.step_time(self.works[i], ctx.bandwidth)
                tr.t_compute_start[gid] = t
                if routes.device is None:  # (no slowdown window: no call)
                    end = w.slowdowns.finish(t, work) if w.slowdowns.starts else t + work
                else:
                    groups[k] = group = ctx.shares.start(routes.device, work, t, self, k)
                    if group.state != FREE:
                        return
                    end = group.end  # type: ignore[assignment]
                tr.t_compute_end[gid] = end
                t = end
        arrival = Timeout(ctx.env, t - ctx.env._now, w.priority, at=t)  # type: ignore[attr-defined]
        if self.waiting:
            self._point_at(arrival)
        else:  # (laid out as the iteration begins: the process will yield it)
            self.event = arrival

    def _point_at(self, event: simpy.Event) -> None:
        """Make ``event`` the one the worker's process waits on."""
        old, self.event = self.event, event
        if self.waiting:  # (else the process has not yielded yet: it will yield ``event``)
            resume = self.w.process._resume  # type: ignore[union-attr]
            old.callbacks.remove(resume)  # type: ignore[union-attr]
            event.callbacks.append(resume)  # type: ignore[union-attr]
            self.w.process._target = event  # type: ignore[union-attr]

    # ---- what the fair share reports -------------------------------------------------------------

    def delayed(self, group: Group) -> None:
        """Stage ``group.tag`` was free and is not any more: withdraw the stages laid out after it."""
        k, plan = group.tag, self.plan
        for j in range(k + 1, len(plan)):
            later = self.groups.pop(j, None)
            if later is not None:
                self.ctx.shares.cancel(later)
            if plan[j] >= _COMPUTE:
                self._unstamp(self.gids[plan[j] - _COMPUTE], start=True)
        if plan[k] >= _COMPUTE:  # a computation on the device: its start stands, its end is unknown
            self._unstamp(self.gids[plan[k] - _COMPUTE], start=False)
        self._point_at(self.ctx.env.event())

    def _unstamp(self, gid: int, start: bool) -> None:
        tr = self.ctx.trace
        tr.t_compute_end[gid] = _NAN
        if start:
            tr.t_compute_start[gid] = _NAN

    def finished(self, group: Group, t: float) -> None:
        k = group.tag
        code = self.plan[k]
        if code >= _COMPUTE:
            self.ctx.trace.t_compute_end[self.gids[code - _COMPUTE]] = t
        self._run(k + 1, t)

    # ---- the end -------------------------------------------------------------------------------

    def arrived(self) -> None:
        """The worker's process resumed at its arrival: take the draws its stages read ahead."""
        if self.groups:
            self.groups.clear()  # (their entries may outlive them: they name their owner)
        w = self.w
        w.busy = self.busy(w.busy)
        if w.routes.pull is not None and w.compute.const is None:  # (constants are never drawn: nothing to skip)
            w.compute.skip(len(self.gids))
        if w.routes.pull is not None and w.latency.const is None:
            w.latency.skip(1)

    def clip(self, times: dict, now: float) -> None:
        """In a copy of the trace's ``times`` taken at ``now``, mid-iteration, keep only what is
        settled: nothing after a transfer still running (a step-by-step loop stamps a computation
        when it starts), and no end for a computation on a device whose end may still change."""
        start, end = times["t_compute_start"], times["t_compute_end"]
        cut = False
        for k, code in enumerate(self.plan):
            group = self.groups.get(k)
            if code >= _COMPUTE:
                gid = self.gids[code - _COMPUTE]
                if cut:
                    start[gid] = end[gid] = _NAN
                elif group is not None and (group.end is None or group.end > now and group.route.loads):
                    end[gid] = _NAN
                cut = cut or group is not None and (group.end is None or group.end > now and bool(group.route.loads))
            elif group is not None and (group.end is None or group.end > now):
                cut = True

    def cancel(self, now: float) -> None:
        """The iteration is cut short at ``now`` (a failure or a stop): its groups are abandoned,
        a computation in progress on a device ends now, and the draws of the stages that had
        started are taken. (`loops.abandon` then cuts the compute stamps laid out past now.)"""
        groups = sorted(self.groups.items(), reverse=True)  # the later (free or waiting) first: none is demoted meanwhile
        self.groups.clear()
        for _, group in groups:
            self.ctx.shares.cancel(group)
        tr, w, gids = self.ctx.trace, self.w, self.gids
        if w.routes.device is not None:
            for gid in gids:
                if tr.t_compute_start[gid] <= now and tr.t_compute_end[gid] != tr.t_compute_end[gid]:  # in progress, end unknown
                    tr.t_compute_end[gid] = now
        started = tr.t_compute_start[gids[0]] <= now  # (False for NaN: laid out before the cut)
        if w.routes.pull is not None and started:
            w.compute.skip(len(gids))
            if tr.t_compute_end[gids[-1]] <= now:
                w.latency.skip(1)
        if started:  # counted in full, as a step-by-step loop does when computing starts; `abandon` cuts the rest
            w.busy = self.busy(w.busy)
        else:  # nothing computed: no stamps at all
            for gid in gids:
                tr.t_compute_start[gid] = tr.t_compute_end[gid] = _NAN

    def busy(self, busy: float) -> float:
        """``busy`` plus this iteration's computations laid out so far, one after the other. (Added
        when they are final, not as they are laid out: a stage withdrawn and laid out again would
        leave round-off in a running sum.)"""
        tr = self.ctx.trace
        for gid in self.gids:
            start, end = tr.t_compute_start[gid], tr.t_compute_end[gid]
            if end == end and start == start:  # (not NaN)
                busy += float(end - start)
        return busy
