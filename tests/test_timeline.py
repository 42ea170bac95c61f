"""The Perfetto timeline (results/timeline.py, results/chrome_trace.py): well-formed tracks for every
algorithm, flows that bind to slices, counters, windows of big runs.

`check_trace_events` reads a timeline the way the Trace Event Format defines it (complete ``X``
slices per pid/tid track, flow ``s``/``f`` events bound to the enclosing slice, ``C`` counters, ``M``
metadata), independently of the writer; every assertion compares with the trace columns.
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict

import numpy as np
import pytest
from helpers import group, make_scenario

from asgd_sim.algorithms import POLICIES
from asgd_sim.results.chrome_trace import EventRows, assign_lanes, nanoseconds, thousandths
from asgd_sim.results.timeline import QUEUE_PID, SERVER_PID, WORKERS_PID, timeline_window, write_timeline
from asgd_sim.runner import run_timing
from asgd_sim.scenario.distributions import Exponential, LogNormal
from asgd_sim.trace import CANCELLED

# Options that make each kind do what it is for (rounds, local steps, cancellations).
OPTIONS = {"ssp": {"staleness_bound": 2}, "k_sync": {"k": 2}, "k_async": {"k": 2}, "k_batch_sync": {"k": 3},
           "k_batch_async": {"k": 2}, "rennala": {"k": 3}, "ringmaster": {"delay_threshold": 3}, "local_sgd": {"local_steps": 2},
           "easgd": {"local_steps": 2}, "fedbuff": {"k": 2, "local_steps": 2}, "fedasync": {"local_steps": 2}}


def _ns(microseconds: float) -> int:
    return round(microseconds * 1000)


def check_trace_events(data: dict) -> dict:
    """Check a Chrome trace as Perfetto reads it; returns its slices per track, flows and counters."""
    events = data["traceEvents"]
    assert isinstance(events, list) and events
    tracks: dict[tuple[int, int], list[tuple[int, int, dict]]] = defaultdict(list)
    flows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    counters: dict[str, list[dict]] = defaultdict(list)
    names: dict[tuple[int, int], str] = {}
    for e in events:
        assert e["ph"] in ("X", "s", "f", "C", "M"), e
        if e["ph"] == "M":
            if e["name"] == "thread_name":
                names[(e["pid"], e["tid"])] = e["args"]["name"]
            continue
        assert isinstance(e["ts"], (int, float)) and math.isfinite(e["ts"]) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["name"], str) and e["dur"] >= 0, e
            tracks[(e["pid"], e["tid"])].append((_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"]), e))
        elif e["ph"] in "sf":
            key = (e["cat"], e["name"], e["id"])
            assert e["ph"] not in flows[key], f"flow {key} has two {e['ph']} events"
            flows[key][e["ph"]] = e
        else:
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values()), e
            counters[e["name"]].append(e)
    # Every track's slices nest or are disjoint (what Perfetto needs to draw a track).
    for track, slices in tracks.items():
        assert track in names, f"track {track} has no thread_name"
        stack: list[int] = []
        for start, end, e in sorted(slices, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"{names[track]}: {e} overlaps a slice ending at {stack[-1] / 1000} us"
            stack.append(end)
    # Each flow: one start bound to a slice starting at its timestamp on its thread (with its
    # category: DevTools' rule; Perfetto's is the enclosing slice), one end ("bp": "e") enclosed
    # by a slice of its thread that starts there too; never backwards in time.
    bound: dict[tuple, tuple[dict, dict]] = {}
    starts = {track: {(s, e["cat"]): e for s, _, e in slices if "cat" in e} for track, slices in tracks.items()}
    for key, pair in flows.items():
        assert set(pair) == {"s", "f"}, f"flow {key} is not one start and one end"
        begin, end = pair["s"], pair["f"]
        assert end["bp"] == "e" and end["ts"] >= begin["ts"]
        source = starts.get((begin["pid"], begin["tid"]), {}).get((_ns(begin["ts"]), begin["cat"]))
        target = starts.get((end["pid"], end["tid"]), {}).get((_ns(end["ts"]), end["cat"]))
        assert source is not None and target is not None, f"flow {key} binds to no slice"
        bound[key] = (source, target)
    return {"tracks": tracks, "flows": bound, "counters": counters, "names": names}


def _timeline(trace, tmp_path, **window):
    info = write_timeline(trace, tmp_path / "timeline.json", **window)
    data = json.loads((tmp_path / "timeline.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["otherData"]["asgd_sim"] == {k: v for k, v in info.items() if k != "events"}
    assert info["events"] == len(data["traceEvents"])
    return info, check_trace_events(data)


def _slices(checked, pid, name=None):
    return [e for (p, _), slices in checked["tracks"].items() if p == pid for _, _, e in slices
            if name is None or e["name"] == name]


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_algorithms_timeline_nests_and_flows_bind(kind, tmp_path) -> None:
    # Latency, a lock held for a while, two shards and a straggler: pulls, pushes and lock queues
    # overlap between workers, and a worker's next pull can start while its push still waits.
    sc = make_scenario(group(Exponential(1.0), 3), group(LogNormal(2.0, 0.5), 1), kind=kind, updates=40, seed=2,
                       latency=Exponential(0.05), shards=2, lock="global", apply=Exponential(0.05), **OPTIONS.get(kind, {}))
    trace = run_timing(sc).trace
    info, checked = _timeline(trace, tmp_path)
    assert info["gradients_shown"] == trace.num_gradients and not info["truncated"]
    # A flow for every gradient of every update row, from that gradient's compute to that row's slice.
    assert info["flows"] == len(checked["flows"]) == len(trace.member_gid)
    for (source, target) in checked["flows"].values():
        gid = source["args"]["gid"]
        assert gid in target["args"]["gradients"]
        assert source["name"] == "compute" and trace.fate[gid] != CANCELLED
    computes = _slices(checked, WORKERS_PID, "compute") + _slices(checked, WORKERS_PID, "compute (cancelled)")
    has_compute = np.isfinite(trace.t_compute_start) & np.isfinite(trace.t_compute_end)
    assert sorted(e["args"]["gid"] for e in computes) == np.flatnonzero(has_compute).tolist()
    for e in computes:  # each compute slice is its gradient's span
        gid = e["args"]["gid"]
        assert _ns(e["ts"]) == nanoseconds(trace.t_compute_start[gid]) and e["args"]["staleness"] == trace.staleness[gid]
        assert (e["name"] == "compute (cancelled)") == (trace.fate[gid] == CANCELLED)
    # A worker does one thing at a time: its pulls, computes and pushes fit on one track.
    assert not [n for (pid, _), n in checked["names"].items() if pid == WORKERS_PID and "#" in n]
    updates = _slices(checked, SERVER_PID)
    assert len(updates) == trace.num_update_rows
    assert sorted(int(e["name"][1:]) for e in updates) == sorted(trace.u_version.tolist())


def test_k_batch_async_pushes_waiting_for_the_lock_get_their_own_tracks(tmp_path) -> None:
    # The case of issue 15: a worker's next pull starts while its previous gradient still waits for the lock.
    sc = make_scenario(group(Exponential(1.0), 8), kind="k_batch_async", k=2, updates=300, latency=Exponential(0.02),
                       apply=0.4, seed=5)
    trace = run_timing(sc).trace
    _, checked = _timeline(trace, tmp_path)
    waits = _slices(checked, QUEUE_PID, "wait")
    assert waits, "pushes wait for the lock"
    # Some worker had a push waiting while it pulled again: the overlap the old timeline drew on one track.
    def worker_of(e):
        return int(checked["names"][(e["pid"], e["tid"])].split()[1])

    busy = [e for e in waits for p in _slices(checked, WORKERS_PID, "pull")
            if worker_of(p) == worker_of(e) and e["ts"] < p["ts"] < e["ts"] + e["dur"]]
    assert busy
    # The counter of pushes waiting rises at each arrival and falls at each lock (independent sweep).
    arrive, lock = trace.t_arrive[np.isfinite(trace.t_arrive)], trace.t_lock[np.isfinite(trace.t_arrive)]
    for e in checked["counters"]["pushes waiting"][::37]:
        t = e["ts"] / 1e6
        expect = np.sum(nanoseconds(arrive) <= _ns(e["ts"])) - np.sum(nanoseconds(lock[np.isfinite(lock)]) <= _ns(e["ts"]))
        assert e["args"]["value"] == expect, t
    # The staleness counter: each update's mean and max over its gradients.
    stale = checked["counters"]["staleness"]
    assert len(stale) == trace.num_update_rows
    for e, row in zip(sorted(stale, key=lambda e: e["ts"]), np.argsort(trace.u_applied, kind="stable")):
        gids, _ = trace.members(row)
        assert e["args"]["mean"] == pytest.approx(trace.staleness[gids].mean(), abs=5e-4)
        assert e["args"]["max"] == trace.staleness[gids].max()


def test_lock_free_concurrent_updates_go_to_lanes(tmp_path) -> None:
    sc = make_scenario(group(Exponential(0.1), 6), lock="none", apply=Exponential(0.3), updates=120, seed=3)
    trace = run_timing(sc).trace
    _, checked = _timeline(trace, tmp_path)
    shard_tracks = {name for (pid, _), name in checked["names"].items() if pid == SERVER_PID}
    assert {"shard 0", "shard 0 #2"} <= shard_tracks
    assert len(_slices(checked, SERVER_PID)) == trace.num_update_rows


def test_a_window_of_a_big_run(tmp_path) -> None:
    trace = run_timing(make_scenario(group(Exponential(1.0), 10), updates=2_000, latency=0.01, apply=0.001, shards=2)).trace
    gids, rows, end = timeline_window(trace, limit=900)
    # The window ends at a pull time; it holds every gradient pulled and every row locked before it,
    # as many as fit in 900, and the next gradient would not fit.
    assert np.array_equal(gids, np.flatnonzero(trace.t_pull < end)) and np.array_equal(rows, np.flatnonzero(trace.u_lock < end))
    assert len(gids) + len(rows) <= 900
    after = np.min(trace.t_pull[trace.t_pull > end])
    assert np.sum(trace.t_pull <= end) + np.sum(trace.u_lock < after) > 900
    assert end in trace.t_pull
    info, checked = _timeline(trace, tmp_path, limit=900)
    assert info["truncated"] and info["gradients_shown"] == len(gids) and info["window_s"] == [None, end]
    computes = _slices(checked, WORKERS_PID, "compute")
    assert {e["args"]["gid"] for e in computes} == set(gids.tolist())
    assert len(_slices(checked, SERVER_PID)) == len(rows)
    # A window in the middle, everything in it.
    info, checked = _timeline(trace, tmp_path, limit=None, start=50.0, end=60.0)
    shown = np.flatnonzero((trace.t_pull >= 50.0) & (trace.t_pull < 60.0))
    assert info["gradients_shown"] == len(shown) and info["window_s"] == [50.0, 60.0]
    assert {e["args"]["gid"] for e in _slices(checked, WORKERS_PID, "compute")} == set(shown.tolist())
    # Flows only between slices both in the window.
    assert all(s["args"]["gid"] in shown for s, _ in checked["flows"].values())


def test_an_empty_trace_is_a_valid_timeline(tmp_path) -> None:
    from asgd_sim.trace import TraceBuilder

    info = write_timeline(TraceBuilder(2).freeze({"workers": 3}), tmp_path / "empty.json")
    data = json.loads((tmp_path / "empty.json").read_text())
    assert info["gradients_shown"] == 0 and info["flows"] == 0
    assert {e["ph"] for e in data["traceEvents"]} == {"M"}


def test_local_steps_push_once_per_period(tmp_path) -> None:
    sc = make_scenario(group(Exponential(1.0), 3), kind="local_sgd", local_steps=3, updates=10, latency=0.1)
    trace = run_timing(sc).trace
    _, checked = _timeline(trace, tmp_path)
    pushes = _slices(checked, WORKERS_PID, "push")
    periods = int(np.sum((trace.local_step == 2) & np.isfinite(trace.t_arrive)))
    assert len(pushes) == periods and periods == 3 * 10  # three workers push once per round
    assert len(_slices(checked, WORKERS_PID, "pull")) == int(np.sum(trace.local_step == 0))


def test_assign_lanes_uses_as_few_lanes_as_overlap_needs() -> None:
    rng = np.random.default_rng(0)
    track = rng.integers(0, 4, 400)
    start = rng.integers(0, 1000, 400)
    end = start + rng.integers(0, 60, 400)
    lanes = assign_lanes(track, start, end)
    for t in range(4):
        mine = track == t
        # The most intervals of this track open at one instant (a sweep): no fewer lanes can do.
        points = sorted([(s, 1) for s in start[mine]] + [(e, -1) for e in end[mine]], key=lambda p: (p[0], p[1]))
        depth = max(np.cumsum([d for _, d in points]))
        assert lanes[mine].max() + 1 == depth
        for lane in range(depth):
            spans = sorted(zip(start[mine & (lanes == lane)], end[mine & (lanes == lane)]))
            assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))


def test_event_rows_write_valid_json() -> None:
    handle = io.BytesIO()
    out = EventRows(handle)
    values = np.array([-1.5, 0.0, 2.25, 1234567.0006])
    out.rows('{"v":', thousandths(values), ',"i":', np.array([1, -2, 3, 4]), "}")
    out.event({"a": 1})
    out.close({"b": 2}, other={"x": [1, None]})
    data = json.loads(handle.getvalue())
    assert [e["v"] for e in data["traceEvents"][:4]] == [-1.5, 0.0, 2.25, 1234567.001]
    assert [e["i"] for e in data["traceEvents"][:4]] == [1, -2, 3, 4]
    assert data["traceEvents"][4:] == [{"a": 1}, {"b": 2}] and data["other"] == {"x": [1, None]}
    assert out.count == 6


def test_cli_writes_any_window_of_a_run_folder(tmp_path, capsys) -> None:
    from asgd_sim.cli import main
    from asgd_sim.results.folder import write_run

    result = run_timing(make_scenario(group(Exponential(1.0), 4), updates=300, latency=0.01))
    parts = write_run(result, tmp_path / "run")
    assert {"plots", "trace", "timeline", "other", "total"} <= parts.keys()
    assert main(["timeline", str(tmp_path / "run"), "--all"]) == 0
    printed = capsys.readouterr().out
    assert f"timeline-all.json: {result.trace.num_gradients:,} of {result.trace.num_gradients:,} gradients" in printed
    _, checked = _timeline(result.trace, tmp_path)  # the default window of this small run is all of it
    full = json.loads((tmp_path / "run" / "timeline-all.json").read_text())
    assert len(full["traceEvents"]) == sum(len(s) for s in checked["tracks"].values()) + len(checked["flows"]) * 2 + sum(
        len(c) for c in checked["counters"].values()) + sum(1 for e in full["traceEvents"] if e["ph"] == "M")
    assert main(["timeline", str(tmp_path / "run"), "--start", "10", "--end", "20", "--out", str(tmp_path / "w.json")]) == 0
    window = json.loads((tmp_path / "w.json").read_text())["otherData"]["asgd_sim"]
    assert window["gradients_shown"] == int(np.sum((result.trace.t_pull >= 10) & (result.trace.t_pull < 20)))
    # Bad input: one line naming the flag, exit 2.
    for argv, flag in ((["--end", "5", "--start", "6"], "--end"), (["--limit", "0"], "--limit"), (["--all", "--limit", "5"], "--limit")):
        assert main(["timeline", str(tmp_path / "run"), *argv]) == 2
        assert capsys.readouterr().err.startswith(f"error: {flag} = ")
    assert main(["timeline", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
