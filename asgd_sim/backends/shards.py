"""Where a real server's shard rows live, and where their updates are computed.

`backends.server.RealServer` decides everything about an update (which gradients, their weights
and staleness, when it may run, which lock it holds, what the trace records); a *shard store*
holds each shard's row and optimizer state and computes the update. Both stores run the same
arithmetic (`backends.updates.ShardMath`: the numerics engine's compiled rule, or its mix and
elastic exchange), so a replay of either matches:

- `LocalShards`: the rows are JAX arrays on the server's device, in the server's process (the
  devices backend).
- `ActorShards`: each shard lives in its own Ray actor (`ShardHost`). A worker sends each shard's
  gradient chunk straight to that shard's actor (`ShardHost.stage`: inline in the call when small,
  through Ray's object store when large), the server then names the staged gradients an update
  applies, and the actor publishes every new row in the object store (`ray.put`), where workers
  fetch it: parameter and gradient bytes never pass through the server's process.

Handles: the server keeps, per shard, a handle of the current row and of the optimizer state, and
gives readers the row handles: the arrays themselves (local) or Ray ObjectRefs (actors). Handles
are immutable, so a (row, version) pair taken under the server's state lock stays consistent
while later updates land. `fetch` turns handles into values (evaluation, checkpoints, results).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from .updates import ShardMath

__all__ = ["ActorShards", "LocalShards", "ShardHost", "ShardStore"]


class ShardStore(Protocol):
    """What `RealServer` asks of the place its shards live (see the module docstring).

    ``reads_from_workers``: the store receives the rows each gradient was computed at (DC-ASGD)
    from the workers' ``ship`` itself, so the server passes no ``reads`` to `update`.
    """

    reads_from_workers: bool

    def init(self, rows: np.ndarray) -> list[tuple[Any, Any]]:
        """Load the initial rows (S x chunk); the (row, state) handle of each shard."""

    def restore(self, shard: int, version: int, row: np.ndarray, state_leaves: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """Load a checkpointed row and optimizer state at ``version``; their handles."""

    def warm_up(self) -> None:
        """Compile the update before the clock starts."""

    def update(self, shard: int, version: int, row: Any, state: Any, grads: Sequence[Any], reads: Sequence[Any] | None,
               weights: Sequence[float], staleness: Sequence[int], workers: Sequence[int],
               dropped: Sequence[Any]) -> tuple[Any, Any, Any]:
        """Apply one update to ``shard`` at ``version`` (its current row/state handles given);
        ``grads`` are what the workers' ``ship`` gave for this shard, ``dropped`` those the
        update leaves out. Returns the new (row, state, model) handles once computed (``model``:
        EASGD's new x_i row of the pushing worker, else None)."""

    def adopt(self, shard: int, shipped: Any) -> Any:
        """EASGD: what a worker shipped for ``shard`` (its model after local steps) becomes its own
        model there, unexchanged; the handle of that row."""

    def place(self, shard: int, row: np.ndarray) -> Any:
        """A handle of ``row`` (a checkpointed worker model) where ``shard``'s readers find it."""

    def discard(self, gids: Sequence[int]) -> None:
        """Gradients that will never be applied (cancelled): free whatever holds them."""

    def fetch(self, handles: Sequence[Any]) -> list[Any]:
        """The values behind row or state handles (None stays None)."""


class LocalShards:
    """Rows and optimizer states as JAX arrays on ``device``, updated in this process."""

    reads_from_workers = False

    def __init__(self, math: ShardMath, device: Any) -> None:
        self.math, self.device = math, device
        self._first: tuple[Any, Any] | None = None
        self._treedef: Any = None

    def init(self, rows: np.ndarray) -> list[tuple[Any, Any]]:
        placed = jax.device_put(rows, self.device)
        out = [(placed[s], self.math.init(placed[s])) for s in range(len(rows))]
        self._first = out[0]
        self._treedef = jax.tree.structure(out[0][1])
        return out

    def restore(self, shard: int, version: int, row: np.ndarray, state_leaves: Sequence[np.ndarray]) -> tuple[Any, Any]:
        leaves = [jax.device_put(np.asarray(leaf), self.device) for leaf in state_leaves]
        return jax.device_put(np.asarray(row, np.float32), self.device), jax.tree.unflatten(self._treedef, leaves)

    def warm_up(self) -> None:
        assert self._first is not None, "init() first"
        self.math.warm_up(*self._first)

    def update(self, shard: int, version: int, row: Any, state: Any, grads: Sequence[Any], reads: Sequence[Any] | None,
               weights: Sequence[float], staleness: Sequence[int], workers: Sequence[int],
               dropped: Sequence[Any]) -> tuple[Any, Any, Any]:
        return self.math.apply(row, state, grads, reads, weights, staleness, workers)

    def adopt(self, shard: int, shipped: Any) -> Any:
        return shipped

    def place(self, shard: int, row: np.ndarray) -> Any:
        return jax.device_put(np.asarray(row, np.float32), self.device)

    def discard(self, gids: Sequence[int]) -> None:
        """(Nothing to free: the server's references were the only ones.)"""

    def fetch(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)


class ShardHost:
    """The body of one shard's Ray actor: its row, optimizer state and version, the gradient
    chunks workers staged for it, and the update. Rows are published with ``ray.put`` (owned by
    this actor, so they outlive any worker that reads them)."""

    def __init__(self, tree: dict[str, Any], name: str, index: int, keep_states: bool) -> None:
        from ..algorithms import make_policy
        from ..numerics.rules import make_server_rule
        from ..scenario.files import scenario_from_dict

        sc = scenario_from_dict(tree, name=name)
        self.index, self.keep_states = index, keep_states
        policy = make_policy(sc)
        self.math = ShardMath(make_server_rule(sc.optimizer, sc.num_workers), policy.gradients_per_update,
                              policy.model_update, sc.algorithm)
        self.staged: dict[int, np.ndarray] = {}
        self.staged_reads: dict[int, np.ndarray] = {}  # DC-ASGD: this shard's row each gradient was computed at
        self.row: Any = None
        self.state: Any = None
        self.version = 0
        self.applied = 0

    def load(self, version: int, row: np.ndarray, state_leaves: Sequence[np.ndarray] | None) -> tuple[Any, Any]:
        """Start from ``row`` at ``version`` (a fresh optimizer state, or a checkpointed one).
        Staged gradients are forgotten: after a recovery their ids are reused."""
        self.staged.clear()
        self.staged_reads.clear()
        self.row = jnp.asarray(np.asarray(row, np.float32))
        state = self.math.init(self.row)
        if state_leaves is not None:
            state = jax.tree.unflatten(jax.tree.structure(state), [jnp.asarray(leaf) for leaf in state_leaves])
        self.state, self.version = state, version
        return self._publish()

    def warm_up(self) -> None:
        self.math.warm_up(self.row, self.state)

    def stage(self, gid: int, chunk: np.ndarray, read: np.ndarray | None = None) -> None:
        """A worker's gradient chunk for this shard (and, for DC-ASGD, this shard's row it was
        computed at), held until an update applies or drops it."""
        self.staged[gid] = chunk
        if read is not None:
            self.staged_reads[gid] = read

    def discard(self, gids: Sequence[int]) -> None:
        for gid in gids:
            self.staged.pop(gid, None)
            self.staged_reads.pop(gid, None)

    def apply(self, version: int, gids: Sequence[int], weights: Sequence[float], staleness: Sequence[int],
              workers: Sequence[int], dropped: Sequence[int]) -> tuple[Any, Any, Any]:
        """Update the row at ``version`` with the staged gradients ``gids`` (for local steps: what
        each push shipped, under its head); publish the result (EASGD: and the worker's model)."""
        if version != self.version:  # the server serialises a shard's updates: anything else is a bug
            raise RuntimeError(f"shard {self.index}: asked to update version {version}, holds version {self.version}")
        self.discard(dropped)
        missing = [g for g in gids if g not in self.staged]
        if missing:
            raise RuntimeError(f"shard {self.index}: gradients {missing} were never staged here")
        grads = [jnp.asarray(self.staged.pop(g)) for g in gids]
        reads = [jnp.asarray(self.staged_reads.pop(g)) for g in gids] if self.math.needs_read else None
        self.row, self.state, model = self.math.apply(self.row, self.state, grads, reads, weights, staleness, workers)
        self.version += 1
        self.applied += 1
        return (*self._publish(), self.place(model) if model is not None else None)

    def adopt(self, gid: int) -> Any:
        """EASGD: the staged chunk of ``gid`` (a worker's model after its local steps), published."""
        return self.place(self.staged.pop(gid))

    def place(self, row: Any) -> Any:
        """Publish ``row`` in the object store (owned by this actor)."""
        import ray

        return ray.put(np.asarray(row, np.float32))

    def _publish(self) -> tuple[Any, Any]:
        import ray

        state = ray.put(jax.tree.map(np.asarray, self.state)) if self.keep_states else None
        return ray.put(np.asarray(self.row)), state

    def alive(self) -> str:
        """The Ray node this actor runs on (the driver's ping: an answer means it lives)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def info(self) -> dict[str, Any]:
        """Where this shard ran and what it did (for the run's metadata and tests)."""
        import ray

        return {"shard": self.index, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "version": self.version, "applied": self.applied, "staged": len(self.staged)}


class ActorShards:
    """A `ShardStore` whose shards are `ShardHost` actors; handles are ObjectRefs they own (state
    handles are None unless the actors keep states, which only checkpoints need)."""

    reads_from_workers = True  # DC-ASGD: workers stage their read rows with their gradients

    def __init__(self, actors: Sequence[Any]) -> None:
        import ray

        self.ray, self.actors = ray, list(actors)

    def init(self, rows: np.ndarray) -> list[tuple[Any, Any]]:
        return self.ray.get([actor.load.remote(0, rows[s], None) for s, actor in enumerate(self.actors)])

    def adopt(self, shard: int, shipped: Any) -> Any:
        return self.ray.get(self.actors[shard].adopt.remote(shipped))  # (shipped: the gradient id it was staged under)

    def place(self, shard: int, row: np.ndarray) -> Any:
        return self.ray.get(self.actors[shard].place.remote(np.asarray(row, np.float32)))

    def restore(self, shard: int, version: int, row: np.ndarray, state_leaves: Sequence[np.ndarray]) -> tuple[Any, Any]:
        return self.ray.get(self.actors[shard].load.remote(version, row, [np.asarray(x) for x in state_leaves]))

    def warm_up(self) -> None:
        self.ray.get([actor.warm_up.remote() for actor in self.actors])

    def update(self, shard: int, version: int, row: Any, state: Any, grads: Sequence[Any], reads: Sequence[Any] | None,
               weights: Sequence[float], staleness: Sequence[int], workers: Sequence[int],
               dropped: Sequence[Any]) -> tuple[Any, Any, Any]:
        # `grads` are gradient ids (what the workers staged their chunks, and for DC-ASGD their
        # read rows, under); the server passes no `reads` (reads_from_workers).
        return self.ray.get(self.actors[shard].apply.remote(version, list(grads), list(weights), list(staleness),
                                                            list(workers), list(dropped)))

    def discard(self, gids: Sequence[int]) -> None:
        if gids:
            for actor in self.actors:
                actor.discard.remote(list(gids))  # (fire and forget: nothing waits for the memory)

    def fetch(self, handles: Sequence[Any]) -> list[Any]:
        refs = [h for h in handles if h is not None]
        values = iter(self.ray.get(refs))
        return [next(values) if h is not None else None for h in handles]

    def info(self) -> list[dict[str, Any]]:
        return self.ray.get([actor.info.remote() for actor in self.actors])
