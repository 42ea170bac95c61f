"""Exact event logs of tiny deterministic scenarios (STYLE.md 7, level 1: SimPy-style logs).

Every expected value below is worked out by hand in the comment above it, from the semantics
pinned in the engine's module docstring and DESIGN.md: a read is recorded when the server serves
it; after its push is applied a worker's next pull is served at that instant; staleness = version
just before the apply minus the version read; ties at equal time go to the engine's bookkeeping
(lock hand-overs, apply completions) first, then to workers by id.
"""

from __future__ import annotations

import numpy as np
import pytest

from asgd_sim.scenario.config import Failures
from asgd_sim.scenario.distributions import Exponential
from asgd_sim.timing.engine import simulate_timing
from asgd_sim.trace import APPLIED, CANCELLED, DROPPED, PENDING

from helpers import INF, applied_order, group, make_scenario, rows

EXACT = dict(abs=1e-12)


def test_two_workers_event_log() -> None:
    # Workers 0 and 1 compute in 1.0 and 1.5; zero latency, infinite bandwidth, apply 0.
    # Both read v0 at t=0. Updates in time order (version before -> after, staleness):
    #   t=1.0  w0 k0 (read 0): v0->1, tau 0; w0 reads v1 at 1.0
    #   t=1.5  w1 k0 (read 0): v1->2, tau 1; w1 reads v2 at 1.5
    #   t=2.0  w0 k1 (read 1): v2->3, tau 1; w0 reads v3 at 2.0
    #   t=3.0  tie: w0 first (worker id). w0 k2 (read 3): v3->4, tau 0; w0 reads v4
    #               then w1 k1 (read 2): v4->5, tau 2; w1 reads v5
    #   t=4.0  w0 k3 (read 4): v5->6, tau 1; w0 reads v6
    #   t=4.5  w1 k2 (read 5): v6->7, tau 1; w1 reads v7
    #   t=5.0  w0 k4 (read 6): v7->8, tau 1
    expected = [  # (worker, k, t_read, read_version, t_applied, staleness) in apply order
        (0, 0, 0.0, 0, 1.0, 0),
        (1, 0, 0.0, 0, 1.5, 1),
        (0, 1, 1.0, 1, 2.0, 1),
        (0, 2, 2.0, 3, 3.0, 0),
        (1, 1, 1.5, 2, 3.0, 2),
        (0, 3, 3.0, 4, 4.0, 1),
        (1, 2, 3.0, 5, 4.5, 1),
        (0, 4, 4.0, 6, 5.0, 1),
    ]
    result = simulate_timing(make_scenario(group(1.0), group(1.5), updates=8))
    trace = result.trace
    assert rows(trace, applied_order(trace)) == expected
    assert result.stopped == "until_updates" and result.updates == 8 and result.sim_time == 5.0
    assert list(trace.u_version) == list(range(1, 9))
    # Each worker has its next gradient in flight, read at its last update (w0 at 5.0 v8, w1 at 4.5 v7).
    pending = np.flatnonzero(trace.fate == PENDING)
    assert sorted(r[:4] for r in rows(trace, pending)) == [(0, 5, 5.0, 8), (1, 3, 4.5, 7)]
    assert np.isnan(trace.t_applied[pending]).all() and list(trace.staleness[pending]) == [-1, -1]


def test_lock_contention_order_and_waits() -> None:
    # 3 workers, compute 1.0, all start at 0; apply 0.3 under one mutex (lock "shard", S = 1).
    # Round 1: all push at t=1.0; the lock goes by worker id at the tie:
    #   w0 t_lock 1.0 applied 1.3 (wait 0); w1 1.3 -> 1.6 (wait 0.3); w2 1.6 -> 1.9 (wait 0.6).
    #   Staleness 0, 1, 2 (each read v0; versions before 0, 1, 2).
    # Each reads right after its own apply: w0 v1 at 1.3, w1 v2 at 1.6, w2 v3 at 1.9.
    # Round 2: the pushes arrive at 2.3, 2.6, 2.9, exactly as the previous holder releases (or
    #   later), so nobody waits: w0 2.3 -> 2.6, w1 2.6 -> 2.9, w2 2.9 -> 3.2; staleness 3-1, 4-2,
    #   5-3 = 2 = M-1 each. The workers are now staggered by the hold time: a steady state with
    #   period 1.3 and no lock wait at all. (0.3 is not a binary fraction: times agree to 1e-12.)
    result = simulate_timing(make_scenario(group(1.0, 3), apply=0.3, updates=9))
    tr = result.trace
    order = applied_order(tr)
    assert [int(tr.worker[g]) for g in order] == [0, 1, 2] * 3
    expected_lock = [1.0, 1.3, 1.6, 2.3, 2.6, 2.9, 3.6, 3.9, 4.2]
    expected_applied = [1.3, 1.6, 1.9, 2.6, 2.9, 3.2, 3.9, 4.2, 4.5]
    assert tr.t_lock[order] == pytest.approx(expected_lock, **EXACT)
    assert tr.t_applied[order] == pytest.approx(expected_applied, **EXACT)
    assert tr.u_lock == pytest.approx(expected_lock, **EXACT)
    waits = tr.t_lock[order] - tr.t_arrive[order]
    assert waits == pytest.approx([0.0, 0.3, 0.6] + [0.0] * 6, **EXACT)
    assert list(tr.staleness[order]) == [0, 1, 2] + [2] * 6
    assert list(tr.read_version[order, 0]) == [0, 0, 0, 1, 2, 3, 4, 5, 6]


def test_lock_handoff_delays_only_handed_over_locks() -> None:
    # As above (3 workers, compute 1.0, apply 0.3, one mutex) with a hand-over of 0.1: a request
    # that waited starts 0.1 after the release; a free lock is taken at once.
    # Round 1 (all push at 1.0): w0 takes the free lock, 1.0 -> 1.3; w1 waited: starts 1.4 -> 1.7;
    #   w2 waited: starts 1.8 -> 2.1. Reads right after each apply: 1.3, 1.7, 2.1.
    # Round 2: pushes at 2.3, 2.7, 3.1 find the lock free (released 2.1, 2.6, 3.0): no hand-over,
    #   2.3 -> 2.6, 2.7 -> 3.0, 3.1 -> 3.4; the workers are now 0.4 apart with period 1.3.
    # Round 3: 3.6 -> 3.9, 4.0 -> 4.3, 4.4 -> 4.7.
    result = simulate_timing(make_scenario(group(1.0, 3), apply=0.3, handoff=0.1, updates=9))
    tr = result.trace
    order = applied_order(tr)
    assert [int(tr.worker[g]) for g in order] == [0, 1, 2] * 3
    assert tr.u_lock == pytest.approx([1.0, 1.4, 1.8, 2.3, 2.7, 3.1, 3.6, 4.0, 4.4], **EXACT)
    assert tr.u_applied == pytest.approx([1.3, 1.7, 2.1, 2.6, 3.0, 3.4, 3.9, 4.3, 4.7], **EXACT)
    assert tr.t_lock[order] - tr.t_arrive[order] == pytest.approx([0.0, 0.4, 0.8] + [0.0] * 6, **EXACT)


def test_lock_handoff_sets_a_saturated_servers_throughput() -> None:
    # 4 workers computing 0.1 against apply 0.3 under one mutex: after the first update someone is
    # always waiting, so every later update starts a hand-over after the last: 0.3 + 0.1 apart.
    result = simulate_timing(make_scenario(group(0.1, 4), apply=0.3, handoff=0.1, updates=40))
    gaps = np.diff(result.trace.u_lock)
    assert gaps == pytest.approx([0.4] * 39, abs=1e-9)
    plain = simulate_timing(make_scenario(group(0.1, 4), apply=0.3, updates=40))
    assert np.diff(plain.trace.u_lock) == pytest.approx([0.3] * 39, abs=1e-9)


def test_sync_barrier() -> None:
    # kind = "sync", 3 workers computing 1, 2, 3. All read v0 at t=0; the round closes on the
    # third push at t=3 with one update averaging the three gradients (weight 1/3 each), and all
    # three read v1 at t=3. Every round repeats this: update v_n at t = 3n, staleness 0.
    result = simulate_timing(make_scenario(group(1.0), group(2.0), group(3.0), kind="sync", updates=4))
    tr = result.trace
    assert result.sim_time == 12.0 and result.updates == 4
    assert list(tr.u_applied) == [3.0, 6.0, 9.0, 12.0]
    for row in range(4):
        gids, weights = tr.members(row)
        assert sorted(tr.worker[gids]) == [0, 1, 2]
        assert list(tr.k[gids]) == [row] * 3
        assert weights == pytest.approx([1 / 3] * 3, abs=1e-15)
        assert list(tr.read_version[gids, 0]) == [row] * 3
        assert list(tr.t_read[gids]) == [3.0 * row] * 3
        assert list(tr.staleness[gids]) == [0, 0, 0]
        # Arrivals at 3n+1, 3n+2, 3n+3; all wait for the barrier, which then applies at 3n+3.
        assert sorted(tr.t_arrive[gids]) == [3.0 * row + 1, 3.0 * row + 2, 3.0 * row + 3]


def test_ssp_fast_worker_blocks() -> None:
    # SSP, s = 1, periods 1 (w0) and 3 (w1). Clocks count commits; a worker that has just taken
    # clock c goes on only if c - min clock <= 1.
    #   t=1 w0 commits: clock 1, min 0, gap 1 -> goes on, reads v1 at 1.
    #   t=2 w0 commits: clock 2, gap 2 > 1 -> waits (its pull was issued at 2).
    #   t=3 w1 commits (clock 1): min 1, w0 released: reads v3 at 3; w1 reads v3 at 3.
    #   t=4 w0 commits clock 3, gap 2 -> waits until w1's commit at 6; reads v5 at 6.
    #   t=7 w0 clock 4 waits until 9 (w1's clock 3), reads v7; t=10 -> 12, reads v9 ...
    # So w0: (t_pull, t_read) = (0,0), (1,1), (2,3), (4,6), (7,9), (10,12): waits 0,0,1,2,2,2.
    result = simulate_timing(make_scenario(group(1.0), group(3.0), kind="ssp", staleness_bound=1, updates=10))
    tr = result.trace
    fast = np.flatnonzero(tr.worker == 0)[:6]
    assert list(tr.t_pull[fast]) == [0.0, 1.0, 2.0, 4.0, 7.0, 10.0]
    assert list(tr.t_read[fast]) == [0.0, 1.0, 3.0, 6.0, 9.0, 12.0]
    assert list(tr.read_version[fast, 0]) == [0, 1, 3, 5, 7, 9]
    assert list(tr.t_compute_start[fast]) == [0.0, 1.0, 3.0, 6.0, 9.0, 12.0]
    slow = np.flatnonzero(tr.worker == 1)[:4]
    assert list(tr.t_read[slow]) == list(tr.t_pull[slow]) == [0.0, 3.0, 6.0, 9.0]  # never waits
    # w1's staleness: k0 read v0, applied after v2 -> 2; later reads v3, v5, v7 -> before 4, 6, 8.
    assert list(tr.staleness[slow[:3]]) == [2, 1, 1]


def test_pull_push_latency_and_bandwidth() -> None:
    # 1 worker, latency 0.01 per message, param_bytes 1e6, worker link 1e7 B/s, server NIC
    # 1e8 B/s: a transfer crosses both at the bottleneck's 1e7 B/s -> 0.1 s.
    #   pull request: issued 0, reaches the server (read, v0) at 0.01
    #   response: latency 0.01 + transfer 0.1 -> compute starts 0.12, ends 1.12 (compute 1.0)
    #   push: latency 0.01 + transfer 0.1 -> arrives 1.23, applied at once (apply 0)
    #   next pull is carried by the push: read v1 at 1.23; response 0.11 -> compute 1.34..2.34
    #   push arrives 2.34 + 0.11 = 2.45.
    sc = make_scenario(group(1.0), latency=0.01, bandwidth=1e7, server_bandwidth=1e8, param_bytes=1e6, updates=2)
    tr = simulate_timing(sc).trace
    assert tr.t_pull[:2] == pytest.approx([0.0, 1.23], **EXACT)
    assert tr.t_read[:2] == pytest.approx([0.01, 1.23], **EXACT)
    assert tr.t_compute_start[:2] == pytest.approx([0.12, 1.34], **EXACT)
    assert tr.t_compute_end[:2] == pytest.approx([1.12, 2.34], **EXACT)
    assert tr.t_arrive[:2] == pytest.approx([1.23, 2.45], **EXACT)
    assert tr.t_applied[:2] == pytest.approx([1.23, 2.45], **EXACT)


def test_server_nic_fair_share_and_rebalance() -> None:
    # 2 workers, zero latency, unlimited worker links, one server NIC of B = 1e7 B/s per direction;
    # messages of 1e6 B (0.1 s alone).
    # Simultaneous: both pulls share the NIC at B/2 -> both done at 0.2; compute 1.0 -> 1.2;
    #   both pushes share the inbound NIC -> arrive 1.4.
    sc = make_scenario(group(1.0, 2), server_bandwidth=1e7, param_bytes=1e6, updates=2)
    tr = simulate_timing(sc).trace
    assert tr.t_compute_start[:2] == pytest.approx([0.2, 0.2], **EXACT)
    assert tr.t_arrive[:2] == pytest.approx([1.4, 1.4], **EXACT)
    # Staggered by 0.05: w0's pull runs alone at B for 0.05 (0.5e6 B left); from 0.05 both run at
    #   B/2, so w0 ends at 0.05 + 0.5e6/5e6 = 0.15, when w1 has 0.5e6 left and speeds up to B:
    #   w1 ends at 0.15 + 0.05 = 0.2. Pushes: w0 from 1.15 alone (0.5e6 by 1.2), shared from 1.2:
    #   w0 arrives 1.3, then w1 (0.5e6 left) alone at B -> 1.35.
    sc = make_scenario(group(1.0, 2, stagger=0.05), server_bandwidth=1e7, param_bytes=1e6, updates=2)
    tr = simulate_timing(sc).trace
    assert tr.t_read[:2] == pytest.approx([0.0, 0.05], **EXACT)
    assert tr.t_compute_start[:2] == pytest.approx([0.15, 0.2], **EXACT)
    assert tr.t_arrive[:2] == pytest.approx([1.3, 1.35], **EXACT)


def test_backup_worker_round() -> None:
    # kind = "sync", backup = 1: 3 workers (compute 1, 2, 5), each round takes the first 2 pushes.
    # Round 0: w0 arrives 1, w1 arrives 2 -> update v1 at 2 (weights 1/2); w2 (busy until 5) is
    #   cancelled at 2: its gradient's fate is cancelled and its compute is cut at 2.
    #   All three read v1 at 2 and start again at once.
    # Round 1: w0 at 3, w1 at 4 -> v2 at 4; w2 cancelled at 4. Round 2: v3 at 6. Same pattern.
    result = simulate_timing(make_scenario(group(1.0), group(2.0), group(5.0), kind="sync", backup=1, updates=4))
    tr = result.trace
    assert list(tr.u_applied) == [2.0, 4.0, 6.0, 8.0]
    for row in range(4):
        gids, weights = tr.members(row)
        assert sorted(tr.worker[gids]) == [0, 1] and list(weights) == [0.5, 0.5]
    slow = np.flatnonzero(tr.worker == 2)
    assert list(tr.fate[slow[:3]]) == [CANCELLED] * 3
    assert list(tr.t_read[slow[:3]]) == [0.0, 2.0, 4.0]
    assert list(tr.read_version[slow[:3], 0]) == [0, 1, 2]
    assert list(tr.t_compute_start[slow[:3]]) == [0.0, 2.0, 4.0]
    assert list(tr.t_compute_end[slow[:3]]) == [2.0, 4.0, 6.0]  # cut at the round's close
    for w in (0, 1):  # the others restart at the update time too
        mine = np.flatnonzero(tr.worker == w)[:3]
        assert list(tr.t_read[mine]) == [0.0, 2.0, 4.0]
    # At the end (t=8) worker 2 has computed all along: busy 8 of 8 s, not 5 + 5 + ... (cancelled
    # work is cut at the cancellation, and the compute under way counts only up to the end).
    # w0 computed 1 s per 2 s round, w1 all the time.
    assert result.busy == pytest.approx([4.0, 8.0, 8.0], **EXACT)


def test_drop_stale_gradients() -> None:
    # async, drop_staleness_above = 0, workers with compute 1.0 (w0) and 1.5 (w1).
    #   t=1.0 w0 (read 0, v0): tau 0 -> applied v1; reads v1
    #   t=1.5 w1 (read 0, v1): tau 1 > 0 -> dropped, version stays 1; w1 reads v1 at 1.5
    #   t=2.0 w0 (read 1): v1->2; t=3.0 w0 (read 2): v2->3, then w1 (read 1, v3): tau 2 dropped
    #   t=4.0 w0 -> v4; t=4.5 w1 (read 3, v4): tau 1 dropped; t=5.0 w0 -> v5; t=6 w0 -> v6.
    # Every w1 gradient is dropped (w0 updates at least once per 1.5 s); all of w0's apply.
    result = simulate_timing(make_scenario(group(1.0), group(1.5), drop_staleness_above=0, updates=6))
    tr = result.trace
    w1 = np.flatnonzero(tr.worker == 1)
    assert list(tr.fate[w1[:3]]) == [DROPPED] * 3
    assert list(tr.staleness[w1[:3]]) == [1, 2, 1]
    assert list(tr.read_version[w1[:4], 0]) == [0, 1, 3, 4]
    assert list(tr.t_lock[w1[:3]]) == [1.5, 3.0, 4.5]
    assert np.isnan(tr.t_applied[w1[:3]]).all()
    w0 = np.flatnonzero((tr.worker == 0) & (tr.fate == APPLIED))
    assert list(tr.t_applied[w0]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert list(tr.staleness[w0]) == [0] * 6
    # Drops do not bump the version: 6 updates, all w0's.
    assert list(tr.u_version) == [1, 2, 3, 4, 5, 6] and set(tr.worker[tr.member_gid]) == {0}


def test_same_seed_same_trace_and_common_random_numbers() -> None:
    sc = make_scenario(group(Exponential(1.0), 3), group(Exponential(2.0), 2), apply=Exponential(0.01), updates=500, seed=7)
    assert simulate_timing(sc).trace.equals(simulate_timing(sc).trace)
    other_seed = make_scenario(group(Exponential(1.0), 3), group(Exponential(2.0), 2), apply=Exponential(0.01), updates=500, seed=8)
    assert not simulate_timing(sc).trace.equals(simulate_timing(other_seed).trace)

    def first_computes(*groups, seed: int = 7) -> np.ndarray:
        tr = simulate_timing(make_scenario(*groups, updates=None, until_time=60.0, seed=seed)).trace
        mine = np.flatnonzero(tr.worker == 0)[:50]
        assert mine.size == 50
        return tr.t_compute_end[mine] - tr.t_compute_start[mine]

    alone = first_computes(group(Exponential(1.0), 2))
    # Adding a group after the first changes the schedule, but not worker 0's compute samples:
    # each worker draws from its own stream, keyed by (seed, worker id). (Durations are end -
    # start, so they agree to rounding at different start times.)
    assert first_computes(group(Exponential(1.0), 2), group(Exponential(0.3), 3)) == pytest.approx(alone, rel=1e-12)
    assert first_computes(group(Exponential(1.0), 2), seed=8) != pytest.approx(alone, rel=1e-3)


def test_failure_cancels_and_restart_pulls_explicitly() -> None:
    # 1 worker, compute 1.0, latency 0.25 each way, crash at 2.5, restart after 1.0.
    #   k0: pull 0, read 0.25, compute 0.5..1.5, push arrives 1.75 (v1); read v1 at 1.75
    #   k1: parameters back at 2.0, compute 2.0..3.0 -> crash at 2.5: cancelled, compute cut at 2.5
    #   down 2.5..3.5; restart: an explicit pull issued at 3.5 reaches the server at 3.75 (v1),
    #   k2: compute 4.0..5.0, arrives 5.25 (v2).
    sc = make_scenario(group(1.0, failures=Failures(at=(2.5,), restart_after=1.0)), latency=0.25, updates=2)
    tr = simulate_timing(sc).trace
    assert list(tr.fate[:3]) == [APPLIED, CANCELLED, APPLIED]
    assert list(tr.t_pull[:3]) == [0.0, 1.75, 3.5]
    assert list(tr.t_read[:3]) == [0.25, 1.75, 3.75]
    assert list(tr.read_version[:3, 0]) == [0, 1, 1]
    assert list(tr.t_compute_start[:3]) == [0.5, 2.0, 4.0]
    assert list(tr.t_compute_end[:3]) == [1.5, 2.5, 5.0]
    assert list(tr.t_arrive[[0, 2]]) == [1.75, 5.25]
    # A crash during the parameters' return trip (at 1.8, before compute would start at 2.0):
    # the gradient never started computing, so it has no compute span.
    sc = make_scenario(group(1.0, failures=Failures(at=(1.8,), restart_after=1.0)), latency=0.25, updates=2)
    tr = simulate_timing(sc).trace
    assert tr.fate[1] == CANCELLED and np.isnan(tr.t_compute_start[1]) and np.isnan(tr.t_compute_end[1])
    assert tr.t_pull[2] == 2.8 and tr.t_read[2] == 3.05


def test_no_transfer_time_when_bandwidth_infinite() -> None:
    # Infinite bandwidth everywhere: a message costs its latency only (0.125 each way here).
    # pull 0 -> read 0.125 -> compute 0.25..1.25 -> arrive 1.375; next read 1.375, compute 1.5.
    tr = simulate_timing(make_scenario(group(1.0), latency=0.125, bandwidth=INF, updates=2)).trace
    assert list(tr.t_read[:2]) == [0.125, 1.375]
    assert list(tr.t_compute_start[:2]) == [0.25, 1.5]
    assert list(tr.t_arrive[:2]) == [1.375, 2.625]
