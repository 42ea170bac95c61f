"""Shared resources with max-min fair rates: network links and devices, one machinery for both.

A *link* has a capacity: bytes/s for a network link (each worker's uplink and downlink, each
server shard's NIC per direction), computations at full speed for a device (``devices[].capacity``).
A *flow* crosses some links, at most at its own ``cap`` (a computation runs at most at full speed,
1). Concurrent flows get the max-min fair allocation, found by progressive filling (Bertsekas &
Gallager, *Data Networks*, sec. 6.5.2): raise every unfrozen flow's rate equally until a link
saturates or a flow reaches its cap, freeze those flows, repeat (`max_min_rates`). On one device of
capacity c, n computations each run at min(1, c/n): processor sharing.

Flows start in *groups* that finish as one stage of a worker's iteration (a message to every
shard, one computation), and most of them never meet a saturated link. So a group is first tried
*free*: its rates alone (max-min over the group's own flows) hold for its whole duration if, at
every instant of it, no link it crosses is over-subscribed by the free groups' rates nor carries a
fluid flow. Then its end is known at its start and it costs no event at all (its owner goes on at
once, `Group.end`). Otherwise it waits for its start and joins the *fluid* model, where rates are
recomputed exactly at each join, completion and cancellation, and the one pump event wakes at the
next of them. Both sides together are exactly the max-min fair allocation at every instant:

- free groups on a link never exceed its capacity together and never overlap a fluid flow on it in
  time: a registration that would is made fluid; and whenever the fluid side changes, any free
  group on a link its flows cross that overlaps their predicted occupancy (start to predicted end)
  is *demoted*: it joins the fluid model at that instant (or at its start), with the bytes it has
  left, and its owner is told that its end is no longer known (`Owner.delayed`);
- with every link under capacity, each flow's rate alone is its max-min rate (every flow keeps a
  bottleneck link: saturated by its own group, where it has the largest rate);
- the fluid model is max-min fair among its flows, and shares no link with a free group at once.

``shared=False`` marks a link that only one group crosses at a time (a worker's own link: its
messages go one after the other); it still limits rates but is never checked for contention.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from heapq import heappop, heappush
from itertools import count
from typing import Any, Protocol

import simpy

from .events import Timeout
from .fluid import Fluid, bundle_keys, max_min_rates

__all__ = ["FairShare", "Route", "Group", "Owner", "max_min_rates", "FREE", "WAITING", "FLUID", "DONE", "CANCELLED"]

# Free groups may load a link up to its capacity times this (the sum of equal shares can round up).
_ROUND_OFF = 1.0 + 1e-12
_INF = math.inf
FREE, WAITING, FLUID, DONE, CANCELLED = range(5)
_PRIORITY = 1  # the engine's bookkeeping priority: before worker events at equal times


class Owner(Protocol):
    """Who started a group: told when a free group's end becomes unknown, and when a group that was
    not free finishes."""

    def delayed(self, group: Group) -> None:
        """``group`` was free and is not any more (it joins the fluid model): its end is unknown."""

    def finished(self, group: Group, t: float) -> None:
        """``group``, which was not free, finished at ``t`` (now)."""


class Route:
    """What a group of flows crosses: per flow (links, cap); their rates alone, the load they put on
    each shared link, one rate when they all run alone at the same rate (else None: such a group
    is never free), and the fluid model's bundle of each."""

    __slots__ = ("paths", "rates", "loads", "rate", "keys")

    def __init__(self, paths: Sequence[tuple[tuple[int, ...], float]], capacity: Sequence[float], shared: Sequence[bool]) -> None:
        self.paths = tuple((tuple(links), float(cap)) for links, cap in paths)
        self.rates = max_min_rates(self.paths, capacity) if self.paths else []
        loads: dict[int, float] = {}
        for (links, _), rate in zip(self.paths, self.rates):
            for link in links:
                if shared[link]:
                    loads[link] = loads.get(link, 0.0) + rate
        self.loads = tuple(loads.items())
        self.rate = self.rates[0] if self.rates and all(r == self.rates[0] for r in self.rates) else None
        self.keys = bundle_keys(self.paths, capacity, shared)


class Group:
    """Flows started together by one owner; ``end`` is known while the group is free."""

    __slots__ = ("route", "size", "start", "end", "state", "owner", "flows", "left", "tag")

    def __init__(self, route: Route, size: float, start: float, owner: Owner, tag: Any) -> None:
        self.route, self.size, self.start, self.owner, self.tag = route, size, start, owner, tag
        self.end: float | None = None
        self.state = WAITING
        self.flows: Sequence[Any] = ()  # its flows in the fluid model (`Fluid.join` sets them)
        self.left = 0  # how many of them are still running


class FairShare:
    """Links of fixed capacity and the groups of flows crossing them (see the module docstring)."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.capacity: list[float] = []
        self.shared: list[bool] = []
        # Free groups per shared link: (start, end, load, group), sorted by start, and their starts.
        self.entries: list[list[tuple[float, float, float, Group]]] = []
        self.starts: list[list[float]] = []
        self.longest: list[float] = []  # the longest free group a link has held (bounds a backward scan)
        self.fluid = Fluid(self.capacity, self.shared)
        self.until: dict[int, float] = {}  # shared link -> the latest predicted end of a fluid flow on it
        self.joins: list[tuple[float, int, Group]] = []  # (start, serial, group) of waiting groups
        self.serial = count()
        self.pump_at = _INF
        self.pump_serial = 0
        self.due = _INF  # the next predicted completion in the fluid model
        self.updating = False

    def add_link(self, capacity: float, shared: bool = True) -> int:
        """A link of ``capacity`` (inf: no limit); ``shared=False``: one group at a time crosses it."""
        self.capacity.append(float(capacity))
        self.shared.append(shared and not math.isinf(capacity))
        self.entries.append([])
        self.starts.append([])
        self.longest.append(0.0)
        return len(self.capacity) - 1

    def route(self, paths: Sequence[tuple[tuple[int, ...], float]]) -> Route:
        """A route of flows, each (links, cap); links of infinite capacity are dropped."""
        kept = [(tuple(link for link in links if not math.isinf(self.capacity[link])), cap) for links, cap in paths]
        return Route(kept, self.capacity, self.shared)

    # ---- starting and cancelling groups ------------------------------------------------------

    def start(self, route: Route, size: float, start: float, owner: Owner, tag: Any = None) -> Group:
        """A group of flows of ``size`` each along ``route``, starting at ``start`` (>= now).

        Free (``group.state == FREE``): ``group.end`` is its end and nothing more will be said
        unless it is demoted (`Owner.delayed`). Otherwise the owner hears `Owner.finished`.
        """
        group = Group(route, size, start, owner, tag)
        rate = route.rate
        if rate is not None:
            end = start + size / rate if size > 0 else start
            if end <= start or not route.loads or self._place(group, start, end):
                group.state, group.end = FREE, end
                return group
        elif not route.paths:  # (no link with a finite capacity: it takes no time)
            group.state, group.end = FREE, start
            return group
        heappush(self.joins, (start, next(self.serial), group))
        self._pump(start)
        return group

    def cancel(self, group: Group) -> None:
        """Abandon ``group`` now (its owner was interrupted)."""
        state = group.state
        group.state = CANCELLED
        if state == FREE:
            self._remove(group)
        elif state == FLUID:
            assert not self.updating, "a fluid group is cancelled from inside an update"
            self.fluid.advance(self.env._now)  # type: ignore[attr-defined]
            self.fluid.remove(group)
            self._settle([])

    # ---- free groups -------------------------------------------------------------------------

    def _place(self, group: Group, start: float, end: float) -> bool:
        """Enter ``group`` as free over [start, end) on its shared links, if it fits there: no
        fluid flow predicted on them by ``start`` and, with the free groups, no link over capacity
        at any instant. False (and nothing entered) if it does not fit."""
        loads = group.route.loads
        until, all_starts, all_entries, longest = self.until, self.starts, self.entries, self.longest
        for link, load in loads:
            if until and start < until.get(link, -_INF):
                return False
            starts = all_starts[link]
            i = bisect_left(starts, end)
            if i and (all_entries[link][i - 1][1] > start or i > 1 and starts[i - 2] > start - longest[link]):
                if not self._room(link, load, start, end, i):
                    return False
        now = self.env._now  # type: ignore[attr-defined]
        for link, load in loads:
            entries, starts = all_entries[link], all_starts[link]
            if entries and entries[0][1] <= now:  # drop the groups that have ended (the front: the earliest starts)
                dead = 1
                while dead < len(entries) and entries[dead][1] <= now:
                    dead += 1
                del entries[:dead], starts[:dead]
            i = bisect_right(starts, start)
            starts.insert(i, start)
            entries.insert(i, (start, end, load, group))
            if end - start > longest[link]:
                longest[link] = end - start
        return True

    def _room(self, link: int, load: float, start: float, end: float, i: int) -> bool:
        """Whether the free groups entered on ``link`` (those before index ``i`` start before
        ``end``) leave room for ``load`` more at every instant of [start, end)."""
        entries, starts = self.entries[link], self.starts[link]
        reach = start - self.longest[link]
        overlap = []
        j = i - 1
        while j >= 0 and starts[j] > reach:
            entry = entries[j]
            if entry[1] > start:
                overlap.append(entry)
            j -= 1
        if not overlap:
            return True
        capacity = self.capacity[link] * _ROUND_OFF
        return load + sum(entry[2] for entry in overlap) <= capacity or _peak(overlap, start, end) + load <= capacity

    def _remove(self, group: Group) -> None:
        for link, _ in group.route.loads:
            entries, starts = self.entries[link], self.starts[link]
            i = bisect_left(starts, group.start)
            while i < len(entries) and starts[i] == group.start:
                if entries[i][3] is group:
                    del entries[i], starts[i]
                    break
                i += 1

    # ---- the fluid model ---------------------------------------------------------------------

    def _pump(self, at: float) -> None:
        """Make sure an update runs at ``at`` (or earlier)."""
        if at >= self.pump_at:
            return
        now = self.env._now  # type: ignore[attr-defined]
        at = max(at, now)
        self.pump_at = at
        self.pump_serial += 1
        event = Timeout(self.env, at - now, _PRIORITY, at=at)
        event.callbacks.append(self._pumped)
        event.serial = self.pump_serial  # type: ignore[attr-defined]

    def _pumped(self, event: Any) -> None:
        if event.serial != self.pump_serial:
            return  # superseded by an earlier one
        self.pump_at = _INF
        now = self.env._now  # type: ignore[attr-defined]
        fluid = self.fluid
        fluid.advance(now)
        finished = [group for group in fluid.completions(now >= self.due) if group.state == FLUID]
        for group in finished:
            group.state = DONE
        joins = self.joins
        while joins and joins[0][0] <= now:
            group = heappop(joins)[2]
            if group.state == WAITING:
                group.state = FLUID
                fluid.join(group, group.size)
        self._settle(finished)

    def _settle(self, finished: list[Group]) -> None:
        """Recompute the fluid rates, demote the free groups they now overlap, schedule the next
        update, then tell the owners."""
        self.updating = True
        now = self.env._now  # type: ignore[attr-defined]
        fluid = self.fluid
        delayed = []
        while True:
            self.due, self.until = fluid.settle(now) if fluid else (_INF, {})
            joined = False
            for link, end in self.until.items():
                entries = self.entries[link]
                for entry in [e for e in entries[:bisect_left(self.starts[link], end)] if e[1] > now]:
                    group = entry[3]
                    if group.state != FREE:
                        continue
                    self._remove(group)
                    delayed.append(group)
                    if group.start <= now:
                        group.state = FLUID
                        fluid.join(group, group.size - group.route.rate * (now - group.start))  # type: ignore[operator]
                        joined = True
                    else:
                        group.state = WAITING
                        heappush(self.joins, (group.start, next(self.serial), group))
            if not joined:
                break
        self.updating = False
        if self.due < _INF:
            self._pump(self.due)
        if self.joins:
            self._pump(self.joins[0][0])
        for group in delayed:
            group.end = None
            group.owner.delayed(group)
        for group in finished:
            group.end = now
            group.owner.finished(group, now)


def _peak(entries: list[tuple[float, float, float, Group]], start: float, end: float) -> float:
    """The largest total load of ``entries`` at any instant of [start, end)."""
    points = sorted([(max(e[0], start), e[2]) for e in entries] + [(e[1], -e[2]) for e in entries if e[1] < end],
                    key=lambda p: (p[0], p[1]))
    level = peak = 0.0
    for _, delta in points:
        level += delta
        peak = max(peak, level)
    return peak
