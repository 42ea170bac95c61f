"""Parameter-server shards: versions, locks and the apply queue.

Each shard holds a slice of the parameters and its own version (number of updates applied to
it). Locks follow ``server.lock``:

- ``none``: lock-free (Hogwild, Niu et al. 2011): applies overlap, nothing waits.
- ``shard``: one mutex per shard; ``global``: one mutex for the whole server.
- ``rw``: per-shard readers-writer lock: writers are exclusive; a read waits for a write in
  progress (reads take no time, so they never delay a writer).

Reads are served from the last applied version. An apply holds its lock(s) for ``apply_time``;
an apply that had to wait for a lock starts ``lock_handoff`` after its release (a real server's
waiter wakes and takes the GIL first: `asgd_sim.studies.calibrate` measures it). A released lock
goes to its longest waiter (FIFO) unless ``server.lock_fifo`` < 1: then, with probability
1 - lock_fifo, to one of the other waiters chosen uniformly (a real ``threading.Lock`` makes no
FIFO promise; measured on the devices backend, 68-78 % of contended grants went to the oldest).
Every lock remembers who holds it and who waits, so a deadlock (possible with atomic
multi-shard updates taken in random order) can be explained as a wait-for cycle.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

__all__ = ["Mutex", "Shard", "ParameterServer", "find_wait_cycle"]


class Mutex:
    """A mutex for SimPy processes, FIFO unless ``fifo`` < 1.

    Same semantics as ``simpy.Resource(capacity=1)`` (first come, first served), but a free lock
    is taken with no event at all and a hand-over costs one event: the lock sits on the hot path
    of every update, and a Resource's request/release pair costs two extra events there. With
    ``fifo`` < 1 a release hands the lock to its longest waiter with probability ``fifo``, else
    to one of the others, uniformly (draws from ``rng``, only when two or more wait).
    """

    __slots__ = ("env", "name", "holder", "waiting", "fifo", "rng")

    def __init__(self, env: simpy.Environment, name: str, fifo: float = 1.0, rng: np.random.Generator | None = None) -> None:
        self.env = env
        self.name = name
        self.holder: int | None = None
        self.waiting: deque[tuple[int, simpy.Event]] = deque()
        if fifo < 1.0 and rng is None:
            raise ValueError("a lock that is not FIFO needs a random stream to choose its waiters")
        self.fifo = fifo
        self.rng = rng

    def acquire(self, worker: int) -> simpy.Event | None:
        """None when the lock was free and is now held; else an event that fires on hand-over."""
        if self.holder is None:
            self.holder = worker
            return None
        granted = simpy.Event(self.env)
        self.waiting.append((worker, granted))
        return granted

    def release(self) -> None:
        waiting = self.waiting
        if waiting:
            if self.fifo < 1.0 and len(waiting) > 1 and self.rng.random() >= self.fifo:  # type: ignore[union-attr]
                chosen = 1 + int(self.rng.integers(len(waiting) - 1))  # type: ignore[union-attr]
                self.holder, granted = waiting[chosen]
                del waiting[chosen]
            else:
                self.holder, granted = waiting.popleft()
            granted.succeed()
        else:
            self.holder = None


@dataclass(eq=False)
class Shard:
    index: int
    lock: Mutex | None
    version: int = 0
    # rw only: an event that fires when the write in progress ends (None when none is).
    write_done: simpy.Event | None = None
    writers: int = field(default=0)


class ParameterServer:
    def __init__(self, env: simpy.Environment, shards: int, lock_policy: str, lock_fifo: float = 1.0,
                 grant_rng: np.random.Generator | None = None) -> None:
        self.env = env
        self.lock_policy = lock_policy

        def mutex(name: str) -> Mutex:
            return Mutex(env, name, lock_fifo, grant_rng)

        global_lock = mutex("the global lock") if lock_policy == "global" else None
        self.shards = [
            Shard(s, global_lock if lock_policy == "global" else (mutex(f"shard {s}") if lock_policy in ("shard", "rw") else None))
            for s in range(shards)
        ]
        self.locks: list[Mutex] = [global_lock] if global_lock is not None else [sh.lock for sh in self.shards if sh.lock is not None]
        self._versions: list[int] | None = None

    def versions(self) -> list[int]:
        """Each shard's version now (one list shared until the next commit: callers never change it)."""
        if self._versions is None:
            self._versions = [shard.version for shard in self.shards]
        return self._versions

    def versions_changed(self) -> None:
        self._versions = None

    def begin_write(self, shard: Shard) -> None:
        if self.lock_policy == "rw":
            shard.writers += 1
            if shard.write_done is None:
                shard.write_done = self.env.event()

    def end_write(self, shard: Shard) -> None:
        if self.lock_policy == "rw":
            shard.writers -= 1
            if shard.writers == 0 and shard.write_done is not None:
                done, shard.write_done = shard.write_done, None
                done.succeed()

    def wait_readable(self, shard: Shard):  # type: ignore[no-untyped-def]
        """Generator: with an rw lock, wait until no write is in progress on ``shard``."""
        while shard.write_done is not None:
            yield shard.write_done

    def wait_for_graph(self) -> tuple[dict[int, set[int]], dict[int, list[str]]]:
        """Edges worker -> the worker holding a lock it waits for, with a note per worker."""
        edges: dict[int, set[int]] = {}
        notes: dict[int, list[str]] = {}
        for lock in self.locks:
            if lock.holder is not None:
                notes.setdefault(lock.holder, []).append(f"holds {lock.name}")
            for worker, _ in lock.waiting:
                notes.setdefault(worker, []).append(f"waits for {lock.name}")
                if lock.holder is not None and lock.holder != worker:
                    edges.setdefault(worker, set()).add(lock.holder)
        return edges, notes


def find_wait_cycle(edges: dict[int, set[int]]) -> list[int]:
    """A cycle in the wait-for graph (a list of workers, first repeated at the end), or []."""
    state: dict[int, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[int] = []

    def visit(node: int) -> list[int]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return []
