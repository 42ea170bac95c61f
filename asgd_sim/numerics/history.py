"""Which slot of the device's parameter history holds which version of each shard.

The numerics engine keeps past parameter versions in ``history[C, S, chunk]`` on the device, but
only the versions a gradient may still read: each shard's newest version (future pulls read it)
and the versions read by gradients not yet computed. This host-side map hands out a free slot for
every version a wave writes and, when slots run short, frees every slot whose version nobody can
read any more (`collect`): memory follows the staleness in flight, not the length of the run.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SlotMap"]


class SlotMap:
    """Version -> slot per shard, and the free slots of each shard (slots are per shard row)."""

    def __init__(self, shards: int, capacity: int) -> None:
        self.shards = shards
        self.capacity = capacity
        self.slot_of = [np.full(1024, -1, np.int32) for _ in range(shards)]  # indexed by version
        self.holds = np.full((shards, capacity), -1, np.int64)  # version in each slot (-1: free)
        # Stacks popped from the end, lowest slot first: slots fill in order, so a run that never
        # collects touches a contiguous block.
        self.free = [list(range(capacity - 1, -1, -1)) for _ in range(shards)]

    def free_slots(self) -> int:
        return min(len(free) for free in self.free)

    def store(self, shard: int, versions: np.ndarray) -> np.ndarray:
        """Slots for new ``versions`` of ``shard`` (in order); the caller made sure enough are free."""
        n = len(versions)
        if n == 0:
            return np.zeros(0, np.int32)
        free = self.free[shard]
        slots = np.array(free[-n:][::-1], np.int32)
        del free[-n:]
        table = self.slot_of[shard]
        newest = int(versions.max())
        if newest >= len(table):
            grown = np.full(max(2 * len(table), newest + 1), -1, np.int32)
            grown[: len(table)] = table
            self.slot_of[shard] = table = grown
        table[versions] = slots
        self.holds[shard, slots] = versions
        return slots

    def store_each(self, versions: np.ndarray) -> np.ndarray:
        """Slots for one new version of every shard (``versions[s]`` of shard s)."""
        return np.array([self.store(s, versions[s:s + 1])[0] for s in range(self.shards)], np.int32)

    def lookup(self, versions: np.ndarray, shards: np.ndarray | None = None) -> np.ndarray:
        """Slots of ``versions``: ``[n, S]`` (one column per shard) or ``[n]`` of ``shards``."""
        if shards is None:
            slots = np.stack([self._table(s, versions[:, s]) for s in range(self.shards)], axis=1)
        elif self.shards == 1:
            slots = self._table(0, versions)
        else:
            slots = np.empty(len(versions), np.int32)
            for s in range(self.shards):
                mine = shards == s
                slots[mine] = self._table(s, versions[mine])
        if slots.size and slots.min() < 0:
            raise RuntimeError("a gradient reads a parameter version that is no longer kept: "
                               "the history's bookkeeping is inconsistent (please report this)")
        return slots

    def _table(self, shard: int, versions: np.ndarray) -> np.ndarray:
        table = self.slot_of[shard]
        inside = versions < len(table)
        return np.where(inside, table[np.minimum(versions, len(table) - 1)], -1).astype(np.int32)

    def collect(self, needed: list[np.ndarray]) -> None:
        """Free every slot of shard s whose version is not in ``needed[s]``."""
        for s in range(self.shards):
            held = self.holds[s]
            release = (held >= 0) & ~np.isin(held, needed[s])
            self.slot_of[s][held[release]] = -1
            held[release] = -1
            # Lowest slots first again (popped from the end).
            self.free[s] = np.flatnonzero(held < 0)[::-1].tolist()

    def grow(self, capacity: int) -> None:
        """More slots (the device array grows alongside; existing slots keep their index)."""
        extra = capacity - self.capacity
        self.holds = np.concatenate([self.holds, np.full((self.shards, extra), -1, np.int64)], axis=1)
        for s in range(self.shards):
            self.free[s] = list(range(capacity - 1, self.capacity - 1, -1)) + self.free[s]
        self.capacity = capacity
