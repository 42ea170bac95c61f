"""Max-min fair sharing (timing/network.py, timing/fluid.py) against independent computations.

`max_min_rates` is compared with the textbook progressive filling (raise every unfrozen flow by the
same step until a link saturates or a flow reaches its cap) on random flow sets. The `FairShare`
that the engine drives (free groups laid out ahead of time, the fluid model of bundles and
virtual clocks, demotions) is compared with a brute-force fluid simulation that recomputes every
active flow's rate with that textbook filling at every start, completion and cancellation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy

from asgd_sim.timing.network import FREE, FairShare, max_min_rates

INF = math.inf


def progressive_filling(flows: list[tuple[tuple[int, ...], float]], capacity: list[float]) -> list[float]:
    """Bertsekas & Gallager 6.5.2, step by step: all unfrozen flows rise together."""
    n = len(flows)
    rates, frozen = [0.0] * n, [False] * n
    spare = list(capacity)
    while not all(frozen):
        users: dict[int, int] = {}
        for i, (links, _) in enumerate(flows):
            if not frozen[i]:
                for link in links:
                    users[link] = users.get(link, 0) + 1
        steps = [spare[link] / count for link, count in users.items()]
        steps += [cap - rates[i] for i, (_, cap) in enumerate(flows) if not frozen[i] and cap < INF]
        step = min(steps)
        for i in range(n):
            if not frozen[i]:
                rates[i] += step
        for link, count in users.items():
            spare[link] -= step * count
        full = {link for link in users if spare[link] <= 1e-12 * capacity[link]}
        for i, (links, cap) in enumerate(flows):
            if not frozen[i] and (full.intersection(links) or rates[i] >= cap * (1 - 1e-12)):
                frozen[i] = True
    return rates


def random_flows(rng: np.random.Generator, links: int, flows: int, caps: bool) -> tuple[list, list[float]]:
    capacity = list(rng.choice([1.0, 2.0, 3.0, 5.0, 10.0], links) * rng.uniform(0.5, 2.0, links))
    out = []
    for _ in range(flows):
        crossed = tuple(sorted(rng.choice(links, rng.integers(1, min(3, links) + 1), replace=False).tolist()))
        cap = float(rng.uniform(0.2, 4.0)) if caps and rng.random() < 0.4 else INF
        out.append((crossed, cap))
    return out, capacity


@pytest.mark.parametrize("seed", range(40))
def test_max_min_rates_equal_progressive_filling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    flows, capacity = random_flows(rng, int(rng.integers(1, 7)), int(rng.integers(1, 25)), caps=seed % 2 == 0)
    assert max_min_rates(flows, capacity) == pytest.approx(progressive_filling(flows, capacity), rel=1e-9)


def test_processor_sharing_and_caps_by_hand() -> None:
    # One device of capacity 2, computations capped at full speed 1: 1 or 2 run at 1, 5 at 2/5.
    assert max_min_rates([((0,), 1.0)] * 2, [2.0]) == [1.0, 1.0]
    assert max_min_rates([((0,), 1.0)] * 5, [2.0]) == pytest.approx([0.4] * 5)
    # Link 0 (10) shared by a flow capped at 1 and two more: 1, 4.5, 4.5; the third also crosses link 1 (2): 1, 7, 2.
    assert max_min_rates([((0,), 1.0), ((0,), INF), ((0,), INF)], [10.0]) == pytest.approx([1.0, 4.5, 4.5])
    assert max_min_rates([((0,), 1.0), ((0,), INF), ((0, 1), INF)], [10.0, 2.0]) == pytest.approx([1.0, 7.0, 2.0])


def brute_force(groups: list[dict], capacity: list[float]) -> dict[int, float]:
    """Each group's end: every flow's rate recomputed with `progressive_filling` at every event."""
    flows = [{"group": g["id"], "links": links, "cap": cap, "left": g["size"], "size": g["size"], "start": g["start"],
              "cancel": g.get("cancel", INF), "done": False} for g in groups for links, cap in g["paths"]]
    t, ends = 0.0, {}
    while True:
        active = [f for f in flows if not f["done"] and f["start"] <= t < f["cancel"]]
        rates = progressive_filling([(f["links"], f["cap"]) for f in active], capacity) if active else []
        upcoming = [f["start"] for f in flows if f["start"] > t] + [f["cancel"] for f in flows if t < f["cancel"] < INF and not f["done"]]
        finish = [t + f["left"] / r if r < INF else t for f, r in zip(active, rates)]
        nxt = min(upcoming + finish, default=INF)
        if nxt == INF:
            break
        for f, r, end in zip(active, rates, finish):
            f["left"] -= r * (nxt - t) if r < INF else f["left"]
            if end == nxt or f["left"] <= 1e-9 * f["size"]:
                f["done"] = True
                f["end"] = nxt
        t = nxt
    for g in groups:
        mine = [f for f in flows if f["group"] == g["id"]]
        if all(f["done"] for f in mine) and g.get("cancel", INF) == INF:
            ends[g["id"]] = max(f["end"] for f in mine)
    return ends


class Recorder:
    """An owner that writes down when its group ends."""

    def __init__(self, ends: dict[int, float], gid: int) -> None:
        self.ends, self.gid = ends, gid

    def delayed(self, group) -> None:
        self.ends.pop(self.gid, None)

    def finished(self, group, t: float) -> None:
        self.ends[self.gid] = t


def simulate_fairshare(groups: list[dict], capacity: list[float], shared: list[bool]) -> dict[int, float]:
    env = simpy.Environment()
    shares = FairShare(env)
    for c, s in zip(capacity, shared):
        shares.add_link(c, shared=s)
    ends: dict[int, float] = {}

    def register(g: dict):
        yield env.timeout(g["registered"])
        group = shares.start(shares.route(g["paths"]), g["size"], g["start"], Recorder(ends, g["id"]), g["id"])
        if group.state == FREE:
            ends[g["id"]] = group.end
        if g.get("cancel", INF) < INF:
            yield env.timeout(g["cancel"] - env.now)
            ends.pop(g["id"], None)
            shares.cancel(group)

    for g in groups:
        env.process(register(g))
    env.run()
    return ends


def random_groups(rng: np.random.Generator, capacity: list[float], shared: list[bool], count: int, cancels: bool) -> list[dict]:
    """Groups of 1-2 flows of one size over the shared links; some also cross a link of their own
    (``shared=False``: a worker's link), which caps a lone flow and is shared by a pair."""
    links = len(capacity)
    groups = []
    for i in range(count):
        start = float(rng.uniform(0, 10))
        cap = float(rng.uniform(0.3, 3.0)) if rng.random() < 0.3 else INF
        paths = []
        for _ in range(int(rng.integers(1, 3))):
            crossed = rng.choice(links, int(rng.integers(1, min(2, links) + 1)), replace=False).tolist()
            paths.append((tuple(crossed), cap))
        if rng.random() < 0.4:
            capacity.append(float(rng.uniform(0.5, 3.0)))
            shared.append(False)
            paths = [(links_ + (len(capacity) - 1,), c) for links_, c in paths]
        g = {"id": i, "start": start, "registered": float(rng.uniform(max(0.0, start - 3), start)), "paths": paths,
             "size": float(rng.uniform(0.5, 4.0))}
        if cancels and rng.random() < 0.15:
            g["cancel"] = start + float(rng.uniform(0.1, 2.0))
        groups.append(g)
    return groups


@pytest.mark.parametrize("seed", range(30))
def test_fair_share_follows_a_brute_force_fluid_simulation(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    capacity = list(rng.choice([1.0, 2.0, 4.0], int(rng.integers(1, 4))) * 1.0)
    shared = [True] * len(capacity)
    groups = random_groups(rng, capacity, shared, int(rng.integers(2, 30)), cancels=seed % 3 == 0)
    expected = brute_force(groups, capacity)
    got = simulate_fairshare(groups, capacity, shared)
    assert sorted(got) == sorted(expected)
    for gid, end in expected.items():
        assert got[gid] == pytest.approx(end, rel=1e-9), f"group {gid}"


def test_groups_alone_on_their_links_cost_no_event() -> None:
    # Messages that never meet: each is free, its end known at its start, and the fair share
    # schedules nothing; two that overlap on a link of capacity 1 share it.
    env = simpy.Environment()
    shares = FairShare(env)
    link = shares.add_link(1.0)
    route = shares.route([((link,), INF)])
    ends: dict[int, float] = {}
    a = shares.start(route, 2.0, 0.0, Recorder(ends, 0))
    b = shares.start(route, 1.0, 5.0, Recorder(ends, 1))
    assert (a.state, a.end, b.state, b.end) == (FREE, 2.0, FREE, 6.0) and not env._queue
    c = shares.start(route, 1.0, 5.5, Recorder(ends, 2))  # overlaps b: both run at 1/2 from 5.5
    assert c.state != FREE
    env.run()
    # b: 0.5 done alone by 5.5, 0.5 left at 1/2 -> 6.5; c: 0.5 by 6.5, then alone -> 7.0.
    assert ends == {1: pytest.approx(6.5), 2: pytest.approx(7.0)}
