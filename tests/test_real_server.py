"""The real parameter server carrying out a policy's decisions, driven directly from test threads."""

from __future__ import annotations

import threading
import time

import jax.numpy as jnp

from asgd_sim.algorithms.base import HELD
from asgd_sim.backends.server import RealServer
from asgd_sim.numerics.layout import Layout
from asgd_sim.numerics.problems import build_problem
from asgd_sim.scenario import scenario_from_dict
from asgd_sim.trace import APPLIED, CANCELLED


def sync_server() -> RealServer:
    # Sync with one backup worker: a round takes the first 2 of 3 pushes and stops the third.
    sc = scenario_from_dict({"model": {"name": "quadratic", "dim": 3}, "data": {"name": "none"},
                             "workers": [{"count": 3}], "algorithm": {"kind": "sync", "backup": 1},
                             "run": {"until_updates": 10}, "server": {"apply_time": 0.0}}, name="real-sync")
    return RealServer(sc, Layout(build_problem(sc, 3), 1, 0))


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_stopped_worker_that_pushes_before_it_notices_is_discarded_and_gets_the_broadcast() -> None:
    # On a real backend a stop lands when the worker next looks (Ray: up to 50 ms later); a worker
    # can finish and push the gradient its round no longer wants. That gradient must be cancelled,
    # never applied in the next round (it read the previous round's parameters: staleness 1).
    server = sync_server()
    grad = (jnp.zeros(server.layout.chunk, jnp.float32),)
    reads = [server.read(w, 0.0) for w in range(3)]
    gids = [server.new_gradients(w, 1, reads[w])[0][0] for w in range(3)]
    held: list = []
    first = threading.Thread(target=lambda: held.append(server.push(0, [gids[0]], [grad], None, reads[0])))
    first.start()
    wait_until(lambda: server.policy.state[0] == HELD)
    closer = server.push(1, [gids[1]], [grad], None, reads[1])  # closes round 0 and stops worker 2
    first.join(10)
    assert closer.versions == (1,) and held[0].versions == (1,)
    assert server.slots[2].cancel.is_set()
    answer: list = []  # it finished before it saw the stop (in a thread: a wrong server would hold it)
    pusher = threading.Thread(target=lambda: answer.append(server.push(2, [gids[2]], [grad], None, reads[2])), daemon=True)
    pusher.start()
    pusher.join(10)
    assert answer, "the late push was held as if it belonged to the new round"
    late = answer[0]
    assert server.trace.fate[gids[2]] == CANCELLED
    assert late is not None and late.versions == (1,), "it computes next at the new round's parameters"
    assert not server.slots[2].cancel.is_set()
    # Round 1: workers 2 and 0 push first; every applied gradient read the version it is applied to.
    round1 = {w: server.new_gradients(w, 1, r)[0][0] for w, r in ((0, held[0]), (1, closer), (2, late))}
    waiting = threading.Thread(target=lambda: server.push(2, [round1[2]], [grad], None, late))
    waiting.start()
    wait_until(lambda: server.policy.state[2] == HELD)
    server.push(0, [round1[0]], [grad], None, held[0])
    waiting.join(10)
    trace = server.freeze({})
    applied = trace.fate == APPLIED
    assert applied.sum() == 4 and (trace.staleness[applied] == 0).all()
    assert trace.fate[round1[1]] != APPLIED  # worker 1 was the one stopped in round 1
    server.close()


def test_ringmaster_stops_on_the_real_server_a_computation_that_has_seen_r_updates() -> None:
    # Ringmaster ASGD with stops, R = 2 (Maranjyan et al. 2025, Algorithm 5): at the update that
    # makes a computation's delay R, the server stops it and serves its worker the current point.
    # The real server delivers the policy's on_update after each commit and carries out the stop.
    sc = scenario_from_dict({"model": {"name": "quadratic", "dim": 3}, "data": {"name": "none"},
                             "workers": [{"count": 4}], "algorithm": {"kind": "ringmaster", "delay_threshold": 2, "stops": True},
                             "run": {"until_updates": 10}, "server": {"apply_time": 0.0}}, name="real-ringmaster")
    server = RealServer(sc, Layout(build_problem(sc, 4), 1, 0))
    grad = (jnp.zeros(server.layout.chunk, jnp.float32),)
    reads = [server.read(w, 0.0) for w in range(4)]  # every computation starts at version 0
    gids = [server.new_gradients(w, 1, reads[w])[0][0] for w in range(4)]
    first = server.push(0, [gids[0]], [grad], None, reads[0])  # version 1: no computation has seen 2 updates
    assert first.versions == (1,) and server.policy.version == 1
    assert not any(server.slots[w].cancel.is_set() for w in range(4))
    t_stop = server.clock.now()
    second = server.push(1, [gids[1]], [grad], None, reads[1])  # version 2: workers 2 and 3 (at 0) are stopped
    assert second.versions == (2,) and server.policy.version == 2
    assert server.slots[2].cancel.is_set() and server.slots[3].cancel.is_set()
    assert not server.slots[0].cancel.is_set()  # it restarted at version 1
    # Worker 2 finished before it saw the stop: its push is discarded, never applied at delay 2,
    # and it computes next at the point served with the stop.
    late = server.push(2, [gids[2]], [grad], None, reads[2])
    assert server.trace.fate[gids[2]] == CANCELLED and server.trace.num_update_rows == 2
    assert late is not None and late.versions == (2,) and late.t_read >= t_stop
    assert not server.slots[2].cancel.is_set()
    # Worker 3 notices the flag while it computes: it gives up its gradient and takes the same read.
    server.cancel(3, [gids[3]])
    served = server.await_broadcast(3)
    assert served is not None and served.versions == (2,) and server.trace.fate[gids[3]] == CANCELLED
    assert [server.policy.started_at[w] for w in range(4)] == [1, 2, 2, 2]
    # Worker 0's gradient read version 1: its delay at version 2 is 1 < R, so it is applied.
    g0 = server.new_gradients(0, 1, first)[0][0]
    server.push(0, [g0], [grad], None, first)
    trace = server.freeze({})
    assert trace.fate[g0] == APPLIED and trace.staleness[g0] == 1
    assert server.policy.version == 3 and (trace.staleness[trace.fate == APPLIED] <= 1).all()
    server.close()
