"""Algorithms in rounds: an update closes a round, and work on a closed round's parameters is lost.

- sync (BSP), K-sync (Dutta et al. 2018, arXiv:1803.01113), backup workers (Chen et al. 2016,
  arXiv:1604.00981) and local SGD: a round closes on its K-th push (K = workers - backup for
  sync, k for K-sync, every worker for local SGD); the pushers wait for it; computations still
  running on the round's parameters are stopped; everyone then reads the new parameters.
- K-batch-sync (Dutta et al. 2018): K gradients from anyone at the round's parameters; pushers
  keep computing on the parameters they hold until the round closes.
A push that arrives after its round closed is cancelled, and its worker pulls afresh.
"""

from __future__ import annotations

from ..scenario.config import Scenario
from .base import Apply, Cancel, Decision, Hold, Keep, Pull, ServerPolicy, Serve, Stop

__all__ = ["RoundPolicy", "SyncPolicy", "KSyncPolicy", "LocalSGDPolicy", "KBatchSyncPolicy"]


class RoundPolicy(ServerPolicy):
    """A round closes on its ``k``-th push (see the module docstring); subclasses set ``k``."""

    def __init__(self, scenario: Scenario, k: int) -> None:
        super().__init__(scenario)
        self.k = k
        self.buffer: list[tuple[int, list[int]]] = []
        self.waiters: list[int] = []  # served together once the round's update has landed

    @property
    def gradients_per_update(self) -> int:
        return self.k * self.local_steps

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        if self.round_of[worker] != self.round:  # computed on the parameters of a round already closed
            return [Cancel(gids), Pull(worker)]
        self.buffer.append((worker, gids))
        self.waiters.append(worker)
        if len(self.buffer) < self.k:
            return [Hold(worker)]
        return self.close_round(worker)

    def close_round(self, closer: int) -> list[Decision]:
        """The round's update, after stopping the work still running on the round's parameters."""
        batch, self.buffer = self.buffer, []
        stopped = self.computing_on(self.round, besides=closer)
        self.round += 1
        self.waiters.extend(stopped)
        members = [g for _, ids in batch for g in ids]
        weight = self.weight(len(batch), len(members))
        return [Stop(stopped), Apply(members, [weight] * len(members))]

    def weight(self, pushes: int, gradients: int) -> float:
        """Each gradient's weight in the round's update: the average of the gradients."""
        return 1.0 / gradients

    def on_applied(self, worker: int) -> list[Decision]:
        waiters, self.waiters = self.waiters, []
        return [Serve(waiters)]


class SyncPolicy(RoundPolicy):
    """Synchronous SGD (BSP); with ``backup`` workers the round takes the first workers - backup
    pushes (Chen et al. 2016)."""

    kind = "sync"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, scenario.num_workers - scenario.algorithm.backup)


class KSyncPolicy(RoundPolicy):
    """K-sync SGD (Dutta et al. 2018): the first K pushes of a round make its update."""

    kind = "k_sync"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, scenario.algorithm.k)


class LocalSGDPolicy(RoundPolicy):
    """Local SGD (periodic model averaging): every worker takes ``local_steps`` steps from the
    round's parameters; the round's update averages their model changes (THEORY.md C11)."""

    kind = "local_sgd"
    model_update = "local_average"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, scenario.num_workers)

    def weight(self, pushes: int, gradients: int) -> float:
        return 1.0 / pushes  # one model change per worker


class KBatchSyncPolicy(RoundPolicy):
    """K-batch-sync (Dutta et al. 2018): K gradients from anyone at the round's parameters; a
    pusher keeps computing on the parameters it holds until the round closes."""

    kind = "k_batch_sync"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario, scenario.algorithm.k)

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        if self.round_of[worker] != self.round:
            return [Cancel(gids), Pull(worker)]
        self.buffer.append((worker, gids))
        if len(self.buffer) < self.k:
            return [Keep(worker)]
        self.waiters.append(worker)
        return self.close_round(worker)
