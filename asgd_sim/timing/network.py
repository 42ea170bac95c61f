"""Shared links with max-min fair bandwidth, re-balanced whenever a transfer starts or ends.

Each worker has an uplink and a downlink of ``network.bandwidth``; each server shard has a NIC of
``network.server_bandwidth`` per direction (full duplex). A message crosses its worker's link and
its shard's NIC; concurrent messages share both fairly. Rates are the max-min fair allocation
found by progressive filling (Bertsekas & Gallager, *Data Networks*, sec. 6.5.2): raise every
unfrozen flow's rate equally until some link saturates, freeze the flows crossing it, repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy

__all__ = ["Network"]

# Remaining bytes below this fraction of a message count as delivered (float round-off).
_EPS = 1e-9


@dataclass(eq=False)
class _Flow:
    remaining: float
    links: tuple[int, ...]
    done: simpy.Event
    rate: float = 0.0
    size: float = field(default=0.0)


class Network:
    """Links of fixed capacity (bytes/s) and the flows currently crossing them."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.capacity: list[float] = []
        self.flows: list[_Flow] = []
        self._last = 0.0
        self._generation = 0

    def add_link(self, capacity: float) -> int:
        self.capacity.append(capacity)
        return len(self.capacity) - 1

    def transfer(self, nbytes: float, links: tuple[int, ...]) -> simpy.Event:
        """An event that fires when ``nbytes`` have crossed all ``links``."""
        done = self.env.event()
        finite = tuple(link for link in links if not math.isinf(self.capacity[link]))
        if nbytes <= 0 or not finite:
            done.succeed()
            return done
        self._advance()
        self.flows.append(_Flow(nbytes, finite, done, size=nbytes))
        self._rebalance()
        return done

    def cancel(self, done: simpy.Event) -> None:
        """Abandon the transfer behind ``done`` (its sender was interrupted)."""
        for flow in self.flows:
            if flow.done is done:
                self._advance()
                self.flows.remove(flow)
                self._rebalance()
                return

    # ---- internals --------------------------------------------------------------------------

    def _advance(self) -> None:
        elapsed = self.env.now - self._last
        if elapsed > 0:
            for flow in self.flows:
                flow.remaining -= flow.rate * elapsed
        self._last = self.env.now

    def _rebalance(self) -> None:
        self._fair_rates()
        self._generation += 1
        if not self.flows:
            return
        wake = min(max(flow.remaining, 0.0) / flow.rate for flow in self.flows)
        timer = self.env.timeout(wake, self._generation)
        timer.callbacks.append(self._on_wake)

    def _on_wake(self, event: simpy.Event) -> None:
        if event.value != self._generation:
            return  # superseded by a later re-balance
        self._advance()
        finished = [flow for flow in self.flows if flow.remaining <= _EPS * flow.size]
        if not finished:  # round-off left a sliver: finish the soonest one
            finished = [min(self.flows, key=lambda flow: flow.remaining / flow.rate)]
        for flow in finished:
            self.flows.remove(flow)
        self._rebalance()
        for flow in finished:
            flow.done.succeed()

    def _fair_rates(self) -> None:
        """Progressive filling: max-min fair rates of all flows."""
        spare = {link: self.capacity[link] for flow in self.flows for link in flow.links}
        unfrozen = list(self.flows)
        for flow in unfrozen:
            flow.rate = 0.0
        while unfrozen:
            users: dict[int, int] = {}
            for flow in unfrozen:
                for link in flow.links:
                    users[link] = users.get(link, 0) + 1
            step = min(spare[link] / count for link, count in users.items())
            for flow in unfrozen:
                flow.rate += step
            for link, count in users.items():
                spare[link] -= step * count
            saturated = {link for link in users if spare[link] <= 1e-12 * self.capacity[link]}
            unfrozen = [flow for flow in unfrozen if not saturated.intersection(flow.links)]
