"""A user-defined server algorithm for asgd-sim: asynchronous SGD with group commit.

Name it in a scenario (run from the repository root, or put this directory on PYTHONPATH):

    [algorithm]
    kind = "examples.user_algorithm:GroupCommitSGD"
    options = { max_batch = 4 }

or on the command line:

    asgd-sim run scenarios/lock_contention.toml --set 'algorithm.kind=examples.user_algorithm:GroupCommitSGD'

The same class runs in the simulator and on the real backends (``--backend devices`` or ``ray``):
a server algorithm is a policy (`asgd_sim.algorithms.ServerPolicy`) that is fed events (a push
arrived, the update it asked for landed) and returns decisions (apply these gradients, hold this
worker, serve these workers). It never sees a clock, a lock or a thread; the simulator's engine
and the real server carry its decisions out. ``algorithm.options`` become the constructor's
keyword arguments.
"""

from __future__ import annotations

from asgd_sim.algorithms import Apply, Decision, Hold, Serve, ServerPolicy
from asgd_sim.scenario import Scenario


class GroupCommitSGD(ServerPolicy):
    """Asynchronous SGD with group commit: a push that finds the server idle is applied alone, as in
    async SGD; pushes that arrive while an update is being applied wait, and when it lands the
    worker that applied it also applies everything that waited (up to ``max_batch`` pushes per
    update, averaged) before all of them are served. Under lock contention it trades a little
    staleness for fewer, larger updates (databases call it group commit)."""

    kind = "group_commit"

    def __init__(self, scenario: Scenario, max_batch: int = 4) -> None:
        super().__init__(scenario)
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch = {max_batch!r}: must be an integer >= 1 (pushes per update)")
        self.max_batch = max_batch
        self.queue: list[tuple[int, list[int]]] = []  # pushes waiting for the update in progress
        self.leader: int | None = None  # the worker applying updates now, if any
        self.served: list[int] = []  # the workers the leader serves when the queue is empty

    @property
    def gradients_per_update(self) -> int:
        return self.max_batch * self.local_steps

    def on_push(self, worker: int, gids: list[int]) -> list[Decision]:
        if self.leader is not None:  # an update is in progress: wait for the next group
            self.queue.append((worker, gids))
            return [Hold(worker)]
        self.leader, self.served = worker, [worker]
        return [Apply(gids, [1.0] * len(gids))]

    def on_applied(self, worker: int) -> list[Decision]:
        if not self.queue:  # nothing waited: everyone in the groups committed so far reads now
            served, self.served, self.leader = self.served, [], None
            return [Serve(served)]
        group, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch:]
        self.served.extend(w for w, _ in group)
        members = [g for _, gids in group for g in gids]
        return [Apply(members, [1.0 / len(members)] * len(members))]
