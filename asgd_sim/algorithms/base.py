"""A server algorithm as a policy: fed events, it returns decisions (sans I/O).

The server side of an algorithm decides which gradients make an update and what each worker does
next. It is written once, as an object that holds no clock, no lock and no process, in the style
of protocol libraries written "sans I/O" (h11, wsproto): a driver feeds it events and carries out
the decisions it returns. The SimPy timing engine (`asgd_sim.timing.engine`) carries them out on
the simulated clock; the real parameter server (`asgd_sim.backends.server`) with threads, locks
and devices. So a simulated run and a real one run the same policy object.

Events (methods the driver calls):
- `on_read(worker)`: the worker's parameters were read; it starts computing on them.
- `on_push(worker, gids)`: the worker's gradients arrived at the server.
- `on_applied(worker)`: the update that `on_push(worker, ...)` asked for has landed on every shard.
- `on_update(version)`: the server's logical version (the slowest shard's) became ``version``; it
  may only return decisions about other workers (Serve, Read, Stop, Cancel).
- `on_failed(worker)` / `on_restarted(worker)`: the worker went down / is back (it pulls afresh).
- `keep(staleness)`: asked per shard when an update takes its lock: apply this gradient, or drop it.

Decisions (what `on_push` and `on_applied` return, carried out in order by the process or thread
that delivered the event):
- `Apply(gids, weights)`: one update combining these gradients; then the driver calls `on_applied`.
- `Serve(workers, pull)`: these workers' next parameters are read now; held ones resume with them.
- `Read(workers, pull)`: these workers read for themselves, a request the server serves when it
  can (with a readers-writer lock, after a write in progress); held ones resume to do so.
- `Hold(worker)`: the worker waits for a later Serve or Read.
- `Pull(worker)`: its gradients are gone; it pulls afresh (an explicit request, one latency).
- `Keep(worker)`: it goes on computing on the parameters it already holds.
- `Cancel(gids)`: these gradients are discarded.
- `Stop(workers)`: stop these workers' computations in progress; each waits for a Serve.

``pull`` says what the trace records as the pull time ``t_pull``: "read" (the read itself),
"arrival" (the push that carried the pull request arrived) or "held" (the worker asked when it
was held).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..scenario.config import Scenario

__all__ = ["ServerPolicy", "Decision", "Workers", "worker_array", "MODEL_UPDATES", "Apply", "Serve", "Read", "Hold", "Pull", "Keep", "Cancel", "Stop",
           "PULLING", "COMPUTING", "AT_SERVER", "HELD", "STOPPED", "DOWN"]

# What an update does with what it combines (see `ServerPolicy.model_update`).
MODEL_UPDATES = ("gradient", "local_average", "elastic", "delta", "mix")

# What a worker is doing, as far as the server knows.
PULLING, COMPUTING, AT_SERVER, HELD, STOPPED, DOWN = range(6)


@dataclass(frozen=True, slots=True)
class Apply:
    gids: list[int]
    weights: list[float]


@dataclass(frozen=True, slots=True)
class Serve:
    workers: list[int]
    pull: str = "read"  # "read" | "arrival"


@dataclass(frozen=True, slots=True)
class Read:
    workers: list[int]
    pull: str  # "arrival" | "held"


@dataclass(frozen=True, slots=True)
class Hold:
    worker: int


@dataclass(frozen=True, slots=True)
class Pull:
    worker: int


@dataclass(frozen=True, slots=True)
class Keep:
    worker: int


@dataclass(frozen=True, slots=True)
class Cancel:
    gids: list[int]


@dataclass(frozen=True, slots=True)
class Stop:
    workers: list[int]


Decision = Apply | Serve | Read | Hold | Pull | Keep | Cancel | Stop


class Workers(list):
    """A list of worker ids that also holds them as a (read-only) numpy array, so that a driver
    acting on thousands of workers at once need not convert the list (`worker_array`). The
    policies' helpers build it (`ServerPolicy.computing_on`); any change to the list drops the
    array, so it can never disagree with the list."""

    __slots__ = ("array",)

    def __init__(self, workers: np.ndarray) -> None:
        super().__init__(workers.tolist())
        self.array: np.ndarray | None = workers.view()
        self.array.flags.writeable = False


def _dropping_the_array(name: str):  # type: ignore[no-untyped-def]
    change = getattr(list, name)

    def changed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.array = None
        return change(self, *args, **kwargs)

    changed.__name__ = name
    return changed


for _name in ("append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "__setitem__", "__delitem__",
              "__iadd__", "__imul__"):
    setattr(Workers, _name, _dropping_the_array(_name))


def worker_array(workers: list[int]) -> np.ndarray:
    """``workers`` as a numpy array of ids (without a copy for a `Workers` list)."""
    array = workers.array if isinstance(workers, Workers) else None
    return array if array is not None else np.fromiter(workers, np.int64, len(workers))


class ServerPolicy:
    """The base of every server algorithm: what each worker is doing, and the shared defaults.

    Subclasses set ``kind`` and override `on_push` (and `on_applied` when they apply updates).
    ``model_update`` tells the numerics engine what an update does with what it combines (a push of
    ``local_steps`` gradient rows): "gradient" (weighted gradients through the server's update
    rule), "local_average" (local SGD: the workers' model changes divided by the local rate,
    averaged, through the rule), "elastic" (EASGD's elastic exchange), "delta" (FedBuff: the
    weighted model changes through the rule) or "mix" (FedAsync: x <- (1 - a) x + a x_worker).
    """

    kind: ClassVar[str] = ""
    model_update: ClassVar[str] = "gradient"

    def __init__(self, scenario: Scenario) -> None:
        algo = scenario.algorithm
        self.workers = scenario.num_workers
        self.drop_above = algo.drop_staleness_above
        # Local steps per push: the scenario's for the kinds whose pushes are model changes, else 1.
        self.steps = algo.local_steps if self.model_update != "gradient" else 1
        # Per worker, as numpy arrays (indexed like lists), so that drivers note many workers at once.
        self.state = np.full(self.workers, PULLING, np.int8)  # every worker starts with an explicit pull
        self.round = 0  # rounds of the round-based algorithms (0 for the others)
        self.version = 0  # the server's logical version (updates applied to its slowest shard)
        self.round_of = np.zeros(self.workers, np.int64)  # the round whose parameters each worker read
        self._bulk_reads = _reads_in_bulk(type(self))

    # ---- what the numerics and the drivers need to know -----------------------------------------

    @property
    def local_steps(self) -> int:
        """Gradients each push carries (local steps between exchanges)."""
        return self.steps

    @property
    def gradients_per_update(self) -> int:
        """The most gradients one update combines (the numerics pad every update to this width)."""
        return self.local_steps

    # ---- events (the driver calls these; subclasses override the on_* hooks) --------------------------

    def read(self, worker: int) -> None:
        """The worker's parameters were read: it computes on them."""
        self.state[worker] = COMPUTING
        self.round_of[worker] = self.round
        self.on_read(worker)

    def read_many(self, workers: np.ndarray) -> None:
        """`read` for each of ``workers`` (distinct), in order: a driver restarting many at once.
        One numpy step each when the policy's `on_read` has a matching `on_read_many`; else
        `read` one by one, so a subclass that overrides `on_read` alone sees every read."""
        if not self._bulk_reads:
            for worker in workers.tolist():
                self.read(worker)
            return
        self.state[workers] = COMPUTING
        self.round_of[workers] = self.round
        self.on_read_many(workers)

    def push(self, worker: int, gids: list[int]) -> list[Decision]:
        """The worker's gradients ``gids`` arrived at the server."""
        self.state[worker] = AT_SERVER
        return self._noted(self.on_push(worker, gids))

    def applied(self, worker: int) -> list[Decision]:
        """The update asked for by ``worker``'s push has landed on every shard."""
        return self._noted(self.on_applied(worker))

    def updated(self, version: int) -> list[Decision]:
        """The server's logical version became ``version`` (drivers call this after each such update)."""
        self.version = version
        return self._noted(self.on_update(version))

    def failed(self, worker: int) -> None:
        self.state[worker] = DOWN
        self.on_failed(worker)

    def restarted(self, worker: int) -> None:
        self.state[worker] = PULLING
        self.on_restarted(worker)

    def keep(self, staleness: int) -> bool:
        """Whether a gradient this stale on a shard is applied (False: dropped), asked per shard when
        an update takes its lock. A pure function of ``staleness``: drivers may call it from any
        thread, without the lock the other events are delivered under."""
        return self.drop_above is None or staleness <= self.drop_above

    @property
    def may_drop(self) -> bool:
        """Whether `keep` can say no (drivers skip asking when it cannot)."""
        return self.drop_above is not None or type(self).keep is not ServerPolicy.keep

    def _noted(self, decisions: list[Decision]) -> list[Decision]:
        for decision in decisions:
            kind = type(decision)
            if kind is Hold:
                self.state[decision.worker] = HELD
            elif kind is Pull:
                self.state[decision.worker] = PULLING
            elif kind is Keep:
                self.state[decision.worker] = COMPUTING
            elif kind is Stop and decision.workers:
                self.state[worker_array(decision.workers)] = STOPPED
        return decisions

    # ---- hooks ----------------------------------------------------------------------------------

    def on_read(self, worker: int) -> None:
        """A worker starts computing (after `read` noted it)."""

    def on_read_many(self, workers: np.ndarray) -> None:
        """`on_read` for each of ``workers`` (distinct), in order, as numpy steps. A policy that
        overrides `on_read` overrides this too, or its workers' reads are delivered one by one."""

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        raise NotImplementedError(f"{type(self).__name__} must define on_push")

    def on_applied(self, worker: int) -> list[Decision]:
        return []

    def on_update(self, version: int) -> list[Decision]:
        return []

    def on_failed(self, worker: int) -> None:
        """A worker went down (its work in progress is lost)."""

    def on_restarted(self, worker: int) -> None:
        """A worker is back; it pulls afresh."""

    # ---- helpers for subclasses ------------------------------------------------------------------

    def computing_on(self, round_: int, besides: int) -> list[int]:
        """The workers (other than ``besides``) still computing on, or pulling in, round ``round_``."""
        state = self.state
        running = (self.round_of == round_) & ((state == COMPUTING) | (state == PULLING))
        if 0 <= besides < self.workers:
            running[besides] = False
        return Workers(np.flatnonzero(running))


def _reads_in_bulk(cls: type[ServerPolicy]) -> bool:
    """Whether `ServerPolicy.read_many` may note reads in bulk for ``cls``: it keeps `read`, and
    the class that defines its `on_read_many` is (a subclass of) the one that defines `on_read`."""
    def owner(name: str) -> type:
        return next(c for c in cls.__mro__ if name in c.__dict__)

    return cls.read is ServerPolicy.read and issubclass(owner("on_read_many"), owner("on_read"))
