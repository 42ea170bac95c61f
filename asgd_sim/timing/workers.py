"""Per-worker timing: compute samplers, slowdown windows, pipelines and failure schedules.

Everything here is a pure function of the scenario and the worker's own random streams, which
are spawned from one ``SeedSequence(seed)`` by a fixed key (kind, worker id): adding a worker never
changes another worker's samples (docs/DESIGN.md "Semantics").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import simpy

from ..scenario.config import Pipeline, Scenario, Slowdown
from ..scenario.distributions import Distribution
from .streams import MEMO, StreamPrefix

__all__ = ["Sampler", "SamplerBank", "SlowdownProfile", "WorkerState", "stream", "pipeline_step_time", "build_workers"]

# Spawn keys of the random streams (the second element is the worker or shard index).
COMPUTE, LINK, SERVER, FAILURE = 0, 1, 2, 3


def stream(seed: int, kind: int, index: int) -> np.random.Generator:
    """The generator of one stream: independent of how many workers or shards exist."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(kind, index)))


class Sampler:
    """Draws from a distribution in blocks of 1024 (the first two of 64 and 512, `block_size`): one
    numpy call instead of one per draw. The block sizes never change the values: every distribution's draws are the same
    however they are split into calls (tests/test_samplers.py), and thousands of workers that each
    draw a few values need not draw 1,024 each.

    ``rng`` is a generator, or the (seed, kind, index) of its stream: then its blocks come from
    `streams.MEMO` (drawn by an earlier run with the same seed, or drawn now and kept), the
    stream built at its first new block; a constant never draws. A sampler that joins a
    `SamplerBank` keeps its block in the bank's table from then on.
    """

    __slots__ = ("dist", "rng", "const", "buffer", "index", "bank", "row", "taken")

    def __init__(self, dist: Distribution, rng: np.random.Generator | tuple[int, int, int]) -> None:
        self.dist = dist
        self.rng: np.random.Generator | tuple[int, int, int] | StreamPrefix = rng
        self.const: float | None = dist.mean if dist.is_constant else None
        self.buffer: list[float] = []
        self.index = 0
        self.bank: SamplerBank | None = None
        self.row = 0
        self.taken = 0  # blocks taken from its stream's prefix

    def __call__(self) -> float:
        if self.const is not None:
            return self.const
        if self.bank is not None:
            return self.bank.next(self.row)
        if self.index == len(self.buffer):
            self.buffer = self.block().tolist()
            self.index = 0
        value = self.buffer[self.index]
        self.index += 1
        return value

    def peek(self, ahead: int = 0) -> float:
        """The draw ``ahead`` places after the next one, without taking it (`skip` takes them).
        (For a sampler outside a `SamplerBank`: the process loop's workers.)"""
        if self.const is not None:
            return self.const
        while self.index + ahead >= len(self.buffer):  # the blocks a later refill would draw
            self.buffer = self.buffer[self.index:] + self.block().tolist()
            self.index = 0
        return self.buffer[self.index + ahead]

    def skip(self, n: int) -> None:
        """Take ``n`` draws already seen with `peek`."""
        if self.const is None:
            self.index += n

    def block(self) -> np.ndarray:
        """The next block of draws from the stream (the first one shorter; read-only)."""
        if isinstance(self.rng, tuple):
            self.rng = MEMO.prefix(self.rng, partial(stream, *self.rng), self.dist)
        if isinstance(self.rng, StreamPrefix):
            block = self.rng.block(self.taken, block_size(self.taken))
            self.taken += 1
            return block
        return self.dist.sample(self.rng, BLOCK)


BLOCK = 1024  # draws per sampler block
FIRST_BLOCK = 64  # draws in a stream's first block (then 512, then BLOCK each)


def block_size(index: int) -> int:
    """Draws in a stream's block ``index``: a worker that draws a few values (a short run, a slow
    worker) draws 64; one restarted every round of a long run (Rennala: ~460 draws) 576."""
    return FIRST_BLOCK if index == 0 else BLOCK // 2 if index == 1 else BLOCK


class SamplerBank:
    """The samplers of many workers as one table, so that restarting many workers at once draws
    each one's next value in one numpy step (`draw`), from the same stream and in the same order
    as its own `Sampler` would (the per-worker calls go through the table too).

    Constants are one column; a random sampler's current block is a row of ``table`` and its
    position in it an entry of ``position``. Rows are filled at their first draw (``numpy.empty``
    commits no memory before), 8 kB per random sampler against ~32 kB as a list of floats.
    """

    def __init__(self, samplers: list[Sampler]) -> None:
        self.samplers = samplers
        self.random = np.array([s.const is None for s in samplers], bool)
        self.const = np.array([0.0 if s.const is None else s.const for s in samplers], np.float64)
        self.any_random = bool(self.random.any())
        self.table = np.empty((len(samplers), BLOCK) if self.any_random else (0, BLOCK), np.float64)
        self.position = np.full(len(samplers), BLOCK, np.int64)
        # Where each row's current block starts: a block fills the row's end (a first block, or
        # the rest of one drawn before joining, is shorter than the row).
        self.block_start = np.zeros(len(samplers), np.int64)
        for row, sampler in enumerate(samplers):
            if sampler.const is None:
                rest = sampler.buffer[sampler.index:]
                if rest:  # (it drew before joining: the rest of its block moves into the table)
                    self._fill(row, np.asarray(rest))
                sampler.bank, sampler.row = self, row

    def _fill(self, row: int, block: np.ndarray) -> None:
        """Row ``row``'s next block is ``block``: at the row's end, its position at the block's start."""
        at = BLOCK - len(block)
        self.table[row, at:] = block
        self.position[row] = self.block_start[row] = at

    def _fill_many(self, rows: np.ndarray) -> None:
        """`_fill` each of ``rows`` with its sampler's next block (blocks of one size in one step)."""
        blocks = [self.samplers[row].block() for row in rows.tolist()]
        sizes = np.array([len(block) for block in blocks])
        for size in np.unique(sizes).tolist():
            pick = np.flatnonzero(sizes == size)
            at, mine = BLOCK - size, rows[pick]
            self.table[mine, at:] = np.stack([blocks[i] for i in pick.tolist()])
            self.position[mine] = self.block_start[mine] = at

    def next(self, row: int) -> float:
        """Sampler ``row``'s next draw."""
        i = int(self.position[row])
        if i == BLOCK:
            self._fill(row, self.samplers[row].block())
            i = int(self.position[row])
        self.position[row] = i + 1
        return float(self.table[row, i])

    def positions(self) -> np.ndarray:
        """Where every sampler stands (for `rewind`)."""
        return self.position.copy()

    def rewind(self, saved: np.ndarray) -> None:
        """Undo the draws since `positions` returned ``saved``, if they took at most one value per
        sampler: each gives the same values again (a block drawn meanwhile is kept, from its start)."""
        refilled = (saved == BLOCK) & (self.position != BLOCK)
        self.position[:] = saved
        self.position[refilled] = self.block_start[refilled]

    def draw(self, rows: np.ndarray) -> np.ndarray:
        """The next draw of each sampler in ``rows`` (distinct rows), as a new array."""
        values = self.const[rows]
        if self.any_random:
            mine = rows[self.random[rows]]
            if mine.size:
                at = self.position[mine]
                spent = at == BLOCK
                if spent.any():  # (once per BLOCK draws of a sampler)
                    self._fill_many(mine[spent])
                    at[spent] = self.block_start[mine[spent]]
                values[self.random[rows]] = self.table[mine, at]
                self.position[mine] = at + 1
        return values


class SlowdownProfile:
    """Piecewise-constant slowdown factor over simulated time (overlapping windows multiply)."""

    def __init__(self, windows: tuple[Slowdown, ...]) -> None:
        cuts = sorted({t for w in windows for t in (w.start, w.end)})
        self.starts = cuts
        self.factors = [math.prod(w.factor for w in windows if w.start <= a < w.end) for a in cuts]

    @property
    def empty(self) -> bool:
        return not self.starts

    def factor_at(self, t: float) -> float:
        i = np.searchsorted(self.starts, t, side="right") - 1
        return 1.0 if i < 0 else self.factors[i]

    def finish(self, start: float, work: float) -> float:
        """When ``work`` seconds of nominal compute started at ``start`` complete."""
        if not self.starts:
            return start + work
        t, remaining = start, work
        i = int(np.searchsorted(self.starts, t, side="right")) - 1
        while True:
            factor = 1.0 if i < 0 else self.factors[i]
            end = self.starts[i + 1] if i + 1 < len(self.starts) else math.inf
            if remaining * factor <= end - t:
                return t + remaining * factor
            remaining -= (end - t) / factor
            t, i = end, i + 1


def pipeline_step_time(work: float, pipeline: Pipeline, bandwidth: float) -> float:
    """GPipe step time (Huang et al. 2019, arXiv:1811.06965) for one mini-batch of ``work`` seconds.

    Stage s takes work * w_s / m per micro-batch; each of the S-1 boundaries moves the
    micro-batch's activations forward and their gradients backward (2 * bytes / bandwidth).
    Fill-and-drain: the first micro-batch crosses every stage and boundary, the other m-1 follow
    at the pace of the slowest stage or boundary.
    """
    stages, micro = pipeline.stages, pipeline.microbatches
    weights = np.asarray(pipeline.stage_weights or [1.0] * stages, dtype=float)
    stage_times = work * weights / weights.sum() / micro
    boundary = 0.0 if math.isinf(bandwidth) else 2.0 * pipeline.activation_bytes / bandwidth
    bottleneck = max(float(stage_times.max()), boundary if stages > 1 else 0.0)
    return float(stage_times.sum()) + (stages - 1) * boundary + (micro - 1) * bottleneck


@dataclass(eq=False)
class WorkerState:
    """What the engine tracks about one worker while it runs."""

    wid: int
    group: int
    group_name: str
    start: float
    compute: Sampler
    latency: Sampler
    slowdowns: SlowdownProfile
    pipeline: Pipeline | None
    failure_times: list[float]
    mtbf: float | None
    down_time: Any  # callable() -> float | None (None: stays down)
    failure_rng: np.random.Generator | None  # (None: the worker never fails)
    priority: int
    k: int = 0
    alive: bool = True
    interruptible: bool = False
    computing: bool = False  # waiting on its compute timeout (fast path)
    pending_failure: bool = False
    next_read: tuple[float, float, list[int]] | None = None  # (t_pull, t_read, versions)
    has_params: bool = False  # k_batch_sync: keeps computing on the parameters it holds
    unpushed: list[int] = field(default_factory=list)
    routes: Any = None  # its `stages.Routes` when its times depend on others (shared links or device); None: fast path
    chain: Any = None  # the `stages.Iteration` in progress (routes only)
    wake: simpy.Event | None = None
    waiting: bool = False  # held or stopped by the server, until its wake event fires
    read_on_wake: str = ""  # released to read for itself: the pull time to record ("held" | "arrival")
    arrived: float = 0.0  # when its last push arrived
    held_since: float = 0.0  # when the server last held it
    restarted: simpy.Event | None = None
    busy: float = 0.0
    process: simpy.Process | None = None

    def step_time(self, work: float, bandwidth: float) -> float:
        return work if self.pipeline is None else pipeline_step_time(work, self.pipeline, bandwidth)


def build_workers(scenario: Scenario, latency: Distribution) -> list[WorkerState]:
    seed = scenario.run.seed
    racks = {rack.name: rack for rack in scenario.racks}
    workers: list[WorkerState] = []
    for g, group in enumerate(scenario.workers):
        windows = group.slowdowns + (racks[group.rack].slowdowns if group.rack in racks else ())
        for j in range(group.count):
            wid = len(workers)
            failures = group.failures
            fails = bool(failures.at) or failures.mtbf is not None
            fail_rng = stream(seed, FAILURE, wid) if fails else None  # (most workers never fail)
            if failures.restart_after is not None:
                down = (lambda value=failures.restart_after: value)
            elif failures.mttr is not None:
                down = (lambda rng=fail_rng, mean=failures.mttr: float(rng.exponential(mean)))
            else:
                down = (lambda: None)
            workers.append(WorkerState(
                wid=wid, group=g, group_name=group.name, start=j * group.stagger,
                compute=Sampler(group.compute.for_worker(j), (seed, COMPUTE, wid)),
                latency=Sampler(latency, (seed, LINK, wid)),
                slowdowns=SlowdownProfile(windows), pipeline=group.pipeline if group.pipeline and (group.pipeline.stages > 1 or group.pipeline.microbatches > 1) else None,
                failure_times=list(failures.at), mtbf=failures.mtbf, down_time=down, failure_rng=fail_rng,
                priority=2 + wid,
            ))
    return workers
