"""The server side of each algorithm: what happens after a worker's push arrives.

Each ``serve_*`` generator runs in the process of the worker whose push it handles (so an update
costs no extra process) and ends once that worker's next parameters are decided: a piggybacked
read (``_piggyback``), an explicit pull (``next_read = None``) or, for K-batch-sync, the parameters
it already holds. The pinned semantics are in engine.py's module docstring.

- async / EASGD: apply the push alone, then serve the pusher's pull.
- SSP (Ho et al. 2013): the same, then wait while clock - min clock > staleness_bound.
- K-async (Dutta et al. 2018): an update per K pushers; only they pull.
- K-batch-async: an update per K gradients from anyone; the pusher pulls at once.
- sync / K-sync / backup workers (Chen et al. 2016) / local SGD: a round closes on its K-th push;
  work still in progress on the round's parameters is cancelled; everyone pulls the new version.
- K-batch-sync: K gradients from anyone at the same parameters; pushers keep computing.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from ..trace import CANCELLED, TraceBuilder
from .workers import WorkerState

if TYPE_CHECKING:
    from .engine import TimingEngine

__all__ = ["AlgorithmPhases"]


class AlgorithmPhases:
    """Mixed into TimingEngine: one ``_serve_*`` method per algorithm (see the module docstring)."""

    def _serve_async(self: TimingEngine, w: WorkerState, gids: list[int]) -> Generator:
        """Async (ASP) and EASGD: apply this push alone, then serve this worker's pull."""
        yield from self._apply_all(gids, [1.0] * len(gids), w.wid)
        self._piggyback(w)

    def _serve_ssp(self: TimingEngine, w: WorkerState, gids: list[int]) -> Generator:
        """SSP (Ho et al. 2013): commit, then wait while clock - min clock > staleness_bound."""
        yield from self._apply_all(gids, [1.0] * len(gids), w.wid)
        t_applied = self.env.now
        self._piggyback(w)
        self._commit_clock(w)
        if w.clock - self.min_clock > self.ssp_bound:
            w.wake = self.env.event()
            self.clock_waiters.setdefault(w.clock, []).append(w)
            yield w.wake
            versions = yield from self._read()
            w.next_read = (t_applied, self.env.now, versions)

    def _commit_clock(self: TimingEngine, w: WorkerState) -> None:
        counts = self.clock_count
        counts[w.clock] -= 1
        w.clock += 1
        counts[w.clock] = counts.get(w.clock, 0) + 1
        while counts.get(self.min_clock, 0) == 0:
            del counts[self.min_clock]
            self.min_clock += 1
            # Workers at clock c may go once c - min_clock <= bound.
            for waiter in self.clock_waiters.pop(self.min_clock + self.ssp_bound, []):
                waiter.wake.succeed()  # type: ignore[union-attr]

    def _serve_k_async(self: TimingEngine, w: WorkerState, gids: list[int]) -> Generator:
        """K-async (Dutta et al. 2018): update after K workers pushed; only they pull."""
        w.wake = self.env.event()
        self.buffer.append((w, gids))
        if len(self.buffer) < self.K:
            yield w.wake
            return
        batch, self.buffer = self.buffer, []
        members = [g for _, ids in batch for g in ids]
        yield from self._apply_all(members, [1.0 / len(members)] * len(members), w.wid)
        for other, _ in batch:
            self._piggyback(other)
            if other is not w:
                other.wake.succeed()  # type: ignore[union-attr]

    def _serve_k_batch_async(self: TimingEngine, w: WorkerState, gids: list[int]) -> Generator:
        """K-batch-async: the server updates per K gradients; the pusher pulls at once (after the
        update when its push completes the batch)."""
        t_arrive = self.env.now
        self.buffer.append((w, gids))
        if len(self.buffer) >= self.K:
            # The pusher whose gradient completes the batch is served after the update its push
            # triggers, like an async pusher (THEORY.md C5: mean staleness (M-1)/K exactly; K = 1
            # is async). Reading before the update (as a separate apply process did) made every
            # staleness one too large. (Fix: tests/test_engine_theory.py::test_c5_k_batch_async_staleness.)
            batch, self.buffer = self.buffer, []
            members = [g for _, ids in batch for g in ids]
            yield from self._apply_all(members, [1.0 / len(members)] * len(members), w.wid)
            self._piggyback(w, t_arrive)
            return
        versions = yield from self._read()
        w.next_read = (t_arrive, self.env.now, versions)

    def _serve_round(self: TimingEngine, w: WorkerState, gids: list[int]) -> Generator:
        """Sync, K-sync, backup workers, local SGD: a round closes on its K-th push."""
        w.wake = self.env.event()
        if w.round != self.round:  # computed on parameters of a round already closed
            for gid in gids:
                self.trace.fate[gid] = CANCELLED
            w.next_read = None
            return
        self.buffer.append((w, gids))
        self.waiters.append(w)
        if len(self.buffer) < self.K:
            yield w.wake
            return
        yield from self._close_round(w)

    def _serve_k_batch_sync(self: TimingEngine, w: WorkerState, gids: list[int]) -> Generator:
        """K-batch-sync: K gradients from anyone at the same parameters; pushers keep going."""
        if w.round != self.round:
            for gid in gids:
                self.trace.fate[gid] = CANCELLED
            w.next_read = None
            return
        self.buffer.append((w, gids))
        if len(self.buffer) < self.K:  # keep computing on the parameters already held
            tr = self.trace
            w.next_read = (tr.t_pull[gids[0]], tr.t_read[gids[0]], _read_versions(tr, gids[0], self.S))
            w.has_params = True
            return
        w.wake = self.env.event()
        self.waiters.append(w)
        yield from self._close_round(w)

    def _close_round(self: TimingEngine, w: WorkerState) -> Generator:
        batch, self.buffer = self.buffer, []
        closing = self.round
        self.round += 1
        members = [g for _, ids in batch for g in ids]
        weight = 1.0 / len(batch) if self.kind == "local_sgd" else 1.0 / len(members)
        for other in self.workers:  # cancel work still in progress on this round's parameters
            if other.alive and other.interruptible and other.round == closing and other is not w:
                other.wake = self.env.event()
                self.waiters.append(other)
                other.process.interrupt("cancel")  # type: ignore[union-attr]
        yield from self._apply_all(members, [weight] * len(members), w.wid)
        waiters, self.waiters = self.waiters, []
        for other in waiters:
            self._piggyback(other)
            if other is not w and not other.wake.triggered:  # type: ignore[union-attr]
                other.wake.succeed()  # type: ignore[union-attr]


def _read_versions(tr: TraceBuilder, gid: int, shards: int) -> list[int]:
    return list(tr.read_version[gid * shards:(gid + 1) * shards])


