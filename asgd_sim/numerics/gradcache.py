"""Gradients waiting on the device for their other shards' update rows (several shards only).

With S shards a push becomes S update rows, one per shard, which land at different times (locks,
latency) and so often in different waves. The first wave that uses a gradient computes it; when
more of its rows are still to come it is kept in ``cache[K, S, chunk]`` on the device, and the
later waves read it there instead of computing it again (with 4 shards, per-shard locks and
latency, 29 % of gradients were computed twice before). This host-side map decides, wave by
wave, which gradients are read from the cache, which are stored, and frees a slot after its
gradient's last row. A full cache is not an error: a gradient that finds no free slot is
computed again when its next row comes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["GradientCache"]


class GradientCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slot: dict[int, int] = {}  # gid -> cache slot
        self.free = list(range(capacity - 1, -1, -1))
        self.hits = 0  # gradients read from the cache instead of computed again

    @property
    def scratch(self) -> int:
        """The cache row that gradients nobody needs again are written to."""
        return self.capacity

    def plan(self, u_wave: np.ndarray, u_gid: np.ndarray, used_after: Callable[[int, int], bool]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the unique (wave, gradient) pairs of a call, in wave order: whether each is read
        from the cache, its position among its wave's computed or cached gradients, and the
        cache slot it is read from (cached) or stored to (computed; scratch when not needed).

        ``used_after(gid, wave)``: whether a row after that wave may still use the gradient.
        """
        n = len(u_gid)
        cached = np.zeros(n, bool)
        position = np.zeros(n, np.int64)
        slot = np.full(n, self.scratch, np.int64)
        counts: dict[tuple[int, bool], int] = {}
        for u in range(n):
            wave, gid = int(u_wave[u]), int(u_gid[u])
            held = self.slot.get(gid)
            key = (wave, held is not None)
            position[u] = counts.get(key, 0)
            counts[key] = position[u] + 1
            later = used_after(gid, wave)
            if held is not None:
                cached[u], slot[u] = True, held
                self.hits += 1
                if not later:  # read in this wave before any store of it: the slot is free after
                    del self.slot[gid]
                    self.free.append(held)
            elif later and self.free:
                slot[u] = self.slot[gid] = self.free.pop()
        return cached, position, slot

    def forget(self, gids: np.ndarray) -> None:
        """Free the slots of gradients no row will use any more (settled on every shard)."""
        for gid in gids.tolist():
            held = self.slot.pop(gid, None)
            if held is not None:
                self.free.append(held)

    def held(self) -> np.ndarray:
        return np.fromiter(self.slot.keys(), np.int64, len(self.slot))
