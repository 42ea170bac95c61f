"""The workers' random draws, kept across the runs of one process.

A worker's draws are a pure function of (seed, stream kind, worker index, distribution)
(`timing.workers.stream`), so runs that share a seed draw the same values: the variants of a
sweep (``--variant``s over ``--seeds``), the methods of a paper's comparison, the arms of a
what-if. Building a stream and drawing its first blocks costs ~25 us per worker, 0.3-0.4 s a
run at n = 6,174 (the Ringmaster paper's workers), as much as the rest of an asynchronous run's
timing. `StreamMemo` keeps each stream's blocks as they are drawn (and its generator, to draw
more), so the next run with the same seed reads them instead: the same values in the same order,
whichever run drew them first. Least recently used streams are forgotten beyond a byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["StreamPrefix", "StreamMemo", "MEMO", "MEMO_BYTES"]

MEMO_BYTES = 128 * 2**20  # blocks kept across runs (about 15,000 workers' first 1,088 draws)


class StreamPrefix:
    """The blocks one stream has given so far, and its generator (built at the first new block)."""

    __slots__ = ("make", "dist", "generator", "blocks", "memo", "key", "lock")

    def __init__(self, make: Callable[[], np.random.Generator], dist: Any, memo: StreamMemo | None, key: Any) -> None:
        self.make, self.dist, self.memo, self.key = make, dist, memo, key
        self.generator: np.random.Generator | None = None
        self.blocks: list[np.ndarray] = []
        self.lock = threading.Lock()

    def block(self, index: int, size: int) -> np.ndarray:
        """The stream's block ``index`` (``size`` draws when it is drawn here; read-only)."""
        if index < len(self.blocks):
            return self.blocks[index]
        with self.lock:  # (two runs in two threads extend it once)
            while index >= len(self.blocks):
                if self.generator is None:
                    self.generator = self.make()
                block = self.dist.sample(self.generator, size)
                block.flags.writeable = False  # (shared by every run that reads it)
                self.blocks.append(block)
                if self.memo is not None:
                    self.memo.grew(self, block.nbytes)
        return self.blocks[index]


class StreamMemo:
    """Stream prefixes by key, least recently used forgotten beyond ``budget`` bytes."""

    def __init__(self, budget: int = MEMO_BYTES) -> None:
        self.budget = budget
        self.prefixes: OrderedDict[Any, StreamPrefix] = OrderedDict()
        self.nbytes = 0
        self.lock = threading.Lock()

    def prefix(self, key: Any, make: Callable[[], np.random.Generator], dist: Any) -> StreamPrefix:
        """The prefix of stream ``key`` drawing from ``dist`` (a new one, remembered, if unknown)."""
        key = (key, dist)
        try:
            hash(key)
        except TypeError:  # (a distribution that cannot be a key: drawn afresh, not kept)
            return StreamPrefix(make, dist, None, key)
        with self.lock:
            found = self.prefixes.get(key)
            if found is not None:
                self.prefixes.move_to_end(key)
                return found
            if self.budget <= 0:
                return StreamPrefix(make, dist, None, key)
            found = self.prefixes[key] = StreamPrefix(make, dist, self, key)
            return found

    def grew(self, prefix: StreamPrefix, nbytes: int) -> None:
        with self.lock:
            if self.prefixes.get(prefix.key) is not prefix:
                return  # (forgotten meanwhile: its sampler keeps it to itself)
            self.nbytes += nbytes
            while self.nbytes > self.budget and self.prefixes:
                _, oldest = self.prefixes.popitem(last=False)
                self.nbytes -= sum(block.nbytes for block in oldest.blocks)

    def clear(self) -> None:
        with self.lock:
            self.prefixes.clear()
            self.nbytes = 0


MEMO = StreamMemo()
