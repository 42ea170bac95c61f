"""The asynchronous methods for heterogeneous workers since 2022 (docs/THEORY.md C13-C16).

- Rennala SGD (Tyurin & Richtarik, NeurIPS 2023, arXiv:2305.12387): every worker computes at the
  current point; the server averages the first k gradients to arrive (a fast worker may give
  several), steps, and every worker restarts at the new point (work in progress is discarded).
  With fixed compute times tau_i a round takes min{t : sum_i floor(t / tau_i) >= k}.
- Ringmaster ASGD (Maranjyan, Tyurin & Richtarik, ICML 2025, arXiv:2501.16168): asynchronous SGD
  that ignores gradients whose delay is >= R (Algorithm 4); with ``stops`` a computation that has
  seen R updates since it started is stopped at once and its worker restarts at the current point
  (Algorithm 5), so every applied gradient has delay <= R - 1.
- FedBuff (Nguyen et al., AISTATS 2022, arXiv:2106.06639): clients run local SGD from the model
  they pulled and push the model change; the server buffers k changes, weights each by
  1/sqrt(1 + staleness) and applies their average through the server optimizer.
- FedAsync (Xie, Koyejo & Gupta 2019, arXiv:1903.03934): clients run local SGD and push their
  model; the server mixes x <- (1 - a) x + a x_client with a = alpha * s(staleness).

The delay of a computation is the number of updates applied between its start (the read) and its
application: the project's staleness.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from ..scenario.config import Scenario
from .asynchronous import AsyncPolicy, KBatchAsyncPolicy
from .base import COMPUTING, Apply, Decision, Read, Serve, Stop, Workers
from .rounds import KBatchSyncPolicy

__all__ = ["RennalaPolicy", "RingmasterPolicy", "FedBuffPolicy", "FedAsyncPolicy"]


class RennalaPolicy(KBatchSyncPolicy):
    """Rennala SGD (Tyurin & Richtarik 2023): a round collects ``k`` gradients computed at its point
    from whoever delivers them first, steps with their average, and restarts every worker.

    It is the K-batch-sync schedule of Dutta et al. (2018): a pusher keeps computing at the round's
    point; the k-th gradient closes the round and stops every computation still running on it.
    A gradient that arrives after its round closed (possible only on a real backend, where a stop
    takes a moment to land) is dropped and its worker pulls the new point, as in the authors' code.
    """

    kind = "rennala"


class RingmasterPolicy(AsyncPolicy):
    """Ringmaster ASGD (Maranjyan et al. 2025): async SGD that applies a gradient only if its delay
    is below ``delay_threshold`` (R, default: the number of workers); with ``stops`` it also stops,
    at the update that makes it R, every computation whose result could no longer be applied, and
    restarts it at once."""

    kind = "ringmaster"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        # R: the paper sets it from sigma^2/eps; without one, the workers (the delay async SGD
        # has on average: a gradient is applied unless more updates than workers passed).
        threshold = scenario.algorithm.delay_threshold
        self.threshold = int(threshold) if threshold is not None else self.workers
        self.stops = bool(scenario.algorithm.stops)
        self.started_at = np.zeros(self.workers, np.int64)  # the version each computation in progress read
        # Computations in start order: (version read, worker, serial), or (version read, workers,
        # serials) for workers that read together (`on_read_many`). Versions only grow, so the ones
        # to stop at an update are always at the front (O(1) per computation, not per worker).
        self.started: deque[tuple[int, Any, Any]] = deque()
        self.serial = np.zeros(self.workers, np.int64)

    def on_read(self, worker: int) -> None:
        self.started_at[worker] = self.version
        if self.stops:
            self.serial[worker] += 1
            self.started.append((self.version, worker, self.serial[worker]))

    def on_read_many(self, workers: np.ndarray) -> None:
        self.started_at[workers] = self.version
        if self.stops:
            self.serial[workers] += 1
            self.started.append((self.version, workers, self.serial[workers]))

    def keep(self, staleness: int) -> bool:
        return staleness < self.threshold and super().keep(staleness)

    def on_update(self, version: int) -> list[Decision]:
        """Stop the computations that have now seen R updates, and restart them at this point."""
        if not self.stops:
            return []
        parts: list[np.ndarray] = []
        started, limit = self.started, version - self.threshold
        while started and started[0][0] <= limit:
            _, worker, serial = started.popleft()
            if isinstance(worker, np.ndarray):  # workers that read together: those still computing on it
                parts.append(worker[(serial == self.serial[worker]) & (self.state[worker] == COMPUTING)])
            elif serial == self.serial[worker] and self.state[worker] == COMPUTING:
                parts.append(np.array([worker], np.int64))
        if not parts:
            return []
        stopped = Workers(np.concatenate(parts))
        return [Stop(stopped), Serve(stopped)] if stopped else []


class FedBuffPolicy(KBatchAsyncPolicy):
    """FedBuff (Nguyen et al. 2022): each push is a client's model change after ``local_steps``
    local steps; an update averages every ``k`` of them, each weighted by 1/sqrt(1 + staleness)
    (the staleness at the flush) unless the scenario names its own staleness rule, which the
    server rule then applies instead. The pusher pulls the newest model at once."""

    kind = "fedbuff"
    model_update = "delta"

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.weigh_staleness = scenario.optimizer.staleness_rule == "none"
        self.read_at = [0] * self.workers  # the version each worker's computation in progress read
        self.buffer_read: list[int] = []  # the version each buffered push was computed from

    @property
    def gradients_per_update(self) -> int:
        return self.k * self.steps

    def on_read(self, worker: int) -> None:
        self.read_at[worker] = self.version

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        self.buffer.append(gids)
        self.buffer_read.append(self.read_at[worker])  # the version this push's computation started from
        if len(self.buffer) < self.k:
            return [Read([worker], pull="arrival")]
        batch, reads = self.buffer, self.buffer_read
        self.buffer, self.buffer_read = [], []
        weights: list[float] = []
        for ids, read in zip(batch, reads):
            scale = 1.0 / math.sqrt(1.0 + self.version - read) if self.weigh_staleness else 1.0
            weights.extend([scale / len(batch)] * len(ids))  # every row of a push carries its weight
        return [Apply([g for ids in batch for g in ids], weights)]


class FedAsyncPolicy(AsyncPolicy):
    """FedAsync (Xie et al. 2019): each push is a client's model after ``local_steps`` local steps,
    mixed into the server's alone (the numerics apply x <- (1 - a) x + a x_client, with a from
    ``algorithm.mixing`` and the staleness function); the pusher then pulls the mixed model."""

    kind = "fedasync"
    model_update = "mix"

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        return [Apply(gids, [1.0] * len(gids))]
