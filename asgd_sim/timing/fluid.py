"""Max-min fair rates, and the fluid model of the flows whose rates change while they run.

`max_min_rates` is progressive filling (Bertsekas & Gallager, *Data Networks*, sec. 6.5.2): raise
every unfrozen flow's rate equally until a link saturates or a flow reaches its own cap, freeze
those flows, repeat. `Fluid` holds the flows of `timing.network` that are not free: it advances
them in time, finds the next completion and recomputes their rates after each change.

Flows that cross the same shared links under the same cap always get the same rate, so the fluid
model keeps them together as a *bundle*: its rate, and the service each member has received
since the bundle formed (a virtual clock, as in processor-sharing simulations). A member is due
when the clock reaches its finish mark (the clock when it joined plus its size left), so members
wait in a heap by finish mark and an update costs O(bundles + log flows), not O(flows): many
transfers sharing one server NIC, or many computations sharing one device, are one bundle. A
link only one group crosses at a time (``shared=False``: a worker's own link) is, for a flow that
is the only one of its group on it, just a cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from heapq import heappop, heappush
from itertools import count
from typing import Any

__all__ = ["max_min_rates", "Fluid", "EPS"]

_INF = math.inf
# Work left below this fraction of a flow's size counts as done (float round-off).
EPS = 1e-9


def _fill(units: Sequence[Any], capacity: Sequence[float]) -> None:
    """Set ``unit.rate`` of each unit (``links``, ``cap`` and ``count``: that many flows alike) to
    the max-min fair rate of its flows.

    Bottleneck order: the next link to saturate is the one with the least spare capacity per
    unfrozen flow (a flow's own cap is a link of its own), and freezing flows only raises the
    other links' levels, so a heap of levels, pushed again whenever a link's level changes, meets
    them in order. O((U k + L) log L) for U units crossing k links each.
    """
    members: dict[int, list[Any]] = {}
    users: dict[int, int] = {}
    for unit in units:
        unit.rate = -1.0  # unfrozen
        for link in unit.links:
            if link in members:
                members[link].append(unit)
                users[link] += unit.count
            else:
                members[link] = [unit]
                users[link] = unit.count
    spare = {link: capacity[link] for link in members}
    version = dict.fromkeys(members, 0)
    heap: list[tuple[float, int, int]] = [(spare[link] / users[link], link, 0) for link in members]
    for i, unit in enumerate(units):
        if unit.cap < _INF:
            heap.append((unit.cap, ~i, 0))  # (a cap: a link of this unit's own)
    heap.sort()
    left = len(units)
    while left:
        if not heap:  # the rest cross no finite link and have no cap
            for unit in units:
                if unit.rate < 0:
                    unit.rate = _INF
            return
        level, key, ver = heappop(heap)
        if key < 0:
            frozen = [units[~key]]
            if frozen[0].rate >= 0:
                continue
        else:
            if ver != version[key]:
                continue  # superseded: the link's level changed since
            frozen = [unit for unit in members[key] if unit.rate < 0]
            users[key] = 0
            version[key] += 1
        for unit in frozen:
            unit.rate = level
            left -= 1
            for link in unit.links:
                if link == key:
                    continue
                spare[link] -= level * unit.count
                users[link] -= unit.count
                version[link] += 1
                if users[link]:
                    heappush(heap, (max(spare[link], 0.0) / users[link], link, version[link]))


class _Unit:
    __slots__ = ("links", "cap", "count", "rate")

    def __init__(self, links: tuple[int, ...], cap: float) -> None:
        self.links, self.cap, self.count, self.rate = links, cap, 1, 0.0


def max_min_rates(flows: Sequence[tuple[Sequence[int], float]], capacity: Sequence[float]) -> list[float]:
    """The max-min fair rates of ``flows``, each (the links it crosses, its own cap: inf for none)."""
    units = [_Unit(tuple(links), cap) for links, cap in flows]
    _fill(units, capacity)
    return [unit.rate for unit in units]


def bundle_keys(paths: Sequence[tuple[tuple[int, ...], float]], capacity: Sequence[float], shared: Sequence[bool]) -> list[tuple[tuple[int, ...], float]]:
    """Per flow of a group, the (shared links, cap) of the bundle it joins: an unshared link that no
    other flow of the group crosses is a cap; one that others cross stays a link."""
    crossing: dict[int, int] = {}
    for links, _ in paths:
        for link in links:
            crossing[link] = crossing.get(link, 0) + 1
    keys = []
    for links, cap in paths:
        kept = []
        for link in links:
            if shared[link] or crossing[link] > 1:
                kept.append(link)
            else:
                cap = min(cap, capacity[link])
        keys.append((tuple(kept), cap))
    return keys


class _Member:
    __slots__ = ("group", "size", "finish", "bundle", "alive")

    def __init__(self, group: Any, size: float, finish: float, bundle: _Bundle) -> None:
        self.group, self.size, self.finish, self.bundle, self.alive = group, size, finish, bundle, True


class _Bundle:
    """Fluid flows on the same shared links under the same cap: one rate, one virtual clock."""

    __slots__ = ("key", "links", "cap", "count", "rate", "served", "members", "last")

    def __init__(self, key: tuple[tuple[int, ...], float]) -> None:
        self.key, (self.links, self.cap) = key, key
        self.count = 0
        self.rate = 0.0
        self.served = 0.0  # the service each member has had since the bundle formed
        self.members: list[tuple[float, int, _Member]] = []  # (finish mark, serial, member)
        self.last = 0.0  # the largest finish mark of a member (an upper bound once some are gone)

    def head(self) -> _Member | None:
        members = self.members
        while members and not members[0][2].alive:
            heappop(members)
        return members[0][2] if members else None


class Fluid:
    """The flows of groups that are not free: bundles, their rates and virtual clocks."""

    def __init__(self, capacity: Sequence[float], shared: Sequence[bool]) -> None:
        self.capacity, self.shared = capacity, shared
        self.bundles: dict[tuple[tuple[int, ...], float], _Bundle] = {}
        self.serial = count()
        self.t_last = 0.0

    def __bool__(self) -> bool:
        return bool(self.bundles)

    def advance(self, now: float) -> None:
        elapsed = now - self.t_last
        if elapsed > 0:
            for bundle in self.bundles.values():
                bundle.served += bundle.rate * elapsed
        self.t_last = now

    def join(self, group: Any, remaining: float) -> None:
        """Add ``group``'s flows, each with ``remaining`` work left (call `settle` after)."""
        members = []
        for key in group.route.keys:
            bundle = self.bundles.get(key)
            if bundle is None:
                bundle = self.bundles[key] = _Bundle(key)
            finish = bundle.served + remaining
            member = _Member(group, group.size, finish, bundle)
            heappush(bundle.members, (finish, next(self.serial), member))
            bundle.count += 1
            if finish > bundle.last:
                bundle.last = finish
            members.append(member)
        group.flows = members
        group.left = len(members)

    def remove(self, group: Any) -> None:
        """Drop ``group``'s flows still running (call `settle` after)."""
        for member in group.flows:
            if member.alive:
                self._leave(member)

    def _leave(self, member: _Member) -> None:
        member.alive = False
        bundle = member.bundle
        bundle.count -= 1
        if not bundle.count:
            del self.bundles[bundle.key]

    def completions(self, due: bool) -> list[Any]:
        """The groups whose last flow is done now (``due``: an update predicted for now, so if
        round-off left every flow a sliver, the soonest one is done)."""
        done: list[_Member] = []
        for bundle in list(self.bundles.values()):
            while True:
                member = bundle.head()
                if member is None or member.finish - bundle.served > EPS * member.size:
                    break
                heappop(bundle.members)
                done.append(member)
                self._leave(member)
        if not done and due and self.bundles:
            bundle = min(self.bundles.values(), key=lambda b: (b.head().finish - b.served) / b.rate)  # type: ignore[union-attr]
            member = bundle.head()
            heappop(bundle.members)
            done.append(member)  # type: ignore[arg-type]
            self._leave(member)  # type: ignore[arg-type]
        finished = []
        for member in done:
            group = member.group
            group.left -= 1
            if not group.left:
                finished.append(group)
        return finished

    def settle(self, now: float) -> tuple[float, dict[int, float]]:
        """Recompute the rates; the next completion, and per shared link the latest predicted end
        of a flow on it."""
        bundles = list(self.bundles.values())
        _fill(bundles, self.capacity)
        due, until, shared = _INF, {}, self.shared
        for bundle in bundles:
            head = bundle.head()
            rate = bundle.rate
            first = now + max(head.finish - bundle.served, 0.0) / rate  # type: ignore[union-attr]
            if first < due:
                due = first
            last = now + max(bundle.last - bundle.served, 0.0) / rate
            for link in bundle.links:
                if shared[link] and until.get(link, -_INF) < last:
                    until[link] = last
        return due, until
