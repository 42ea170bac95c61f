"""Algorithms without rounds: each update is decided by the pushes that arrive.

- async (ASP) and EASGD: apply each push alone, then serve the pusher.
- SSP (Ho et al. 2013): the same, then hold a worker while its clock - the slowest clock > s.
- K-async (Dutta et al. 2018, arXiv:1803.01113): an update per K pushers; only they pull.
- K-batch-async (Dutta et al. 2018): an update per K gradients from anyone; the pusher pulls at
  once (after the update when its push completes the batch).
"""

from __future__ import annotations

from ..scenario.config import Scenario
from .base import Apply, Decision, Hold, Read, ServerPolicy, Serve

__all__ = ["AsyncPolicy", "EASGDPolicy", "SSPPolicy", "KAsyncPolicy", "KBatchAsyncPolicy"]


class AsyncPolicy(ServerPolicy):
    """Asynchronous SGD (ASP): every push is one update; its pusher then reads the new parameters."""

    kind = "async"

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        return [Apply(gids, [1.0] * len(gids))]

    def on_applied(self, worker: int) -> list[Decision]:
        return [Serve([worker])]


class EASGDPolicy(AsyncPolicy):
    """Asynchronous EASGD (Zhang, Choromanska, LeCun 2015, arXiv:1412.6651): each worker takes
    ``local_steps`` steps on its own model, then exchanges with the center alone (the numerics
    do the elastic exchange)."""

    kind = "easgd"
    model_update = "elastic"


class SSPPolicy(ServerPolicy):
    """Stale synchronous parallel (Ho et al. 2013): commit each push, then hold the pusher while
    its clock (pushes so far) exceeds the slowest worker's by more than ``staleness_bound``."""

    kind = "ssp"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.bound = scenario.algorithm.staleness_bound
        self.clock = [0] * self.workers
        self.clock_count: dict[int, int] = {0: self.workers}
        self.min_clock = 0
        self.clock_waiters: dict[int, list[int]] = {}

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        return [Apply(gids, [1.0] * len(gids))]

    def on_applied(self, worker: int) -> list[Decision]:
        decisions: list[Decision] = [Serve([worker])]
        released = self._commit_clock(worker)
        if released:
            decisions.append(Read(released, pull="held"))
        if self.clock[worker] - self.min_clock > self.bound:
            self.clock_waiters.setdefault(self.clock[worker], []).append(worker)
            decisions.append(Hold(worker))
        return decisions

    def _commit_clock(self, worker: int) -> list[int]:
        """Advance the worker's clock; the held workers this releases, in order."""
        counts = self.clock_count
        counts[self.clock[worker]] -= 1
        self.clock[worker] += 1
        counts[self.clock[worker]] = counts.get(self.clock[worker], 0) + 1
        released: list[int] = []
        while counts.get(self.min_clock, 0) == 0:
            del counts[self.min_clock]
            self.min_clock += 1
            # Workers at clock c may go once c - min_clock <= bound.
            released.extend(self.clock_waiters.pop(self.min_clock + self.bound, []))
        return released


class KAsyncPolicy(ServerPolicy):
    """K-async (Dutta et al. 2018): an update once K workers have pushed; only they then pull."""

    kind = "k_async"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.k = scenario.algorithm.k
        self.buffer: list[tuple[int, list[int]]] = []
        self.batches: dict[int, list[int]] = {}  # closing pusher -> its batch's workers (updates may overlap)

    @property
    def gradients_per_update(self) -> int:
        return self.k

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        self.buffer.append((worker, gids))
        if len(self.buffer) < self.k:
            return [Hold(worker)]
        batch, self.buffer = self.buffer, []
        self.batches[worker] = [w for w, _ in batch]
        members = [g for _, ids in batch for g in ids]
        return [Apply(members, [1.0 / len(members)] * len(members))]

    def on_applied(self, worker: int) -> list[Decision]:
        return [Serve(self.batches.pop(worker))]


class KBatchAsyncPolicy(ServerPolicy):
    """K-batch-async (Dutta et al. 2018): an update per K gradients from anyone; the pusher pulls
    at once. The pusher whose gradient completes the batch is served after the update its push
    triggers, like an async pusher (THEORY.md C5: mean staleness (M-1)/K exactly; K = 1 is async).
    """

    kind = "k_batch_async"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.k = scenario.algorithm.k
        self.buffer: list[list[int]] = []

    @property
    def gradients_per_update(self) -> int:
        return self.k

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        self.buffer.append(gids)
        if len(self.buffer) < self.k:
            return [Read([worker], pull="arrival")]
        batch, self.buffer = self.buffer, []
        members = [g for ids in batch for g in ids]
        return [Apply(members, [1.0 / len(members)] * len(members))]

    def on_applied(self, worker: int) -> list[Decision]:
        return [Serve([worker], pull="arrival")]
