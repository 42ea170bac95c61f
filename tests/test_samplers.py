"""Samplers draw in blocks (the first one short) without changing a single value.

`timing.workers.Sampler` and `SamplerBank` draw 64 values first, then 1,024 at a time. That is
only sound if every distribution's draws are the same however they are split into calls: checked
here for each kind against one call, and the bank's draws against the stream's own sequence,
through refills and rewinds.
"""

from __future__ import annotations

import numpy as np
import pytest

from asgd_sim.scenario.distributions import parse_distribution
from asgd_sim.timing.workers import BLOCK, FIRST_BLOCK, Sampler, SamplerBank, stream

SPECS = [
    {"dist": "exponential", "mean": 0.3},
    {"dist": "shifted_exponential", "shift": 0.1, "mean": 0.3},
    {"dist": "lognormal", "mean": 0.3, "cv": 0.5},
    {"dist": "gamma", "mean": 0.3, "cv": 0.5},
    {"dist": "gamma", "mean": 0.3, "cv": 2.5},  # (shape < 1: another rejection sampler)
    {"dist": "uniform", "low": 0.1, "high": 0.5},
    {"dist": "pareto", "scale": 0.1, "alpha": 1.5},
    {"dist": "empirical", "values": [0.1, 0.2, 0.5]},
    {"dist": "empirical", "values": [0.01 * i for i in range(1, 301)]},
    {"dist": "half_normal", "shift": 1.0, "scale": 2.0},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: f"{spec['dist']}")
def test_draws_do_not_depend_on_how_they_are_split(spec):
    dist = parse_distribution(spec, "compute")
    whole = dist.sample(np.random.default_rng(5), 3000)
    rng = np.random.default_rng(5)
    for first in (1, 7, FIRST_BLOCK):
        rng = np.random.default_rng(5)
        parts = [dist.sample(rng, first), dist.sample(rng, BLOCK), dist.sample(rng, 3000 - first - BLOCK)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_a_sampler_gives_its_streams_sequence():
    dist = parse_distribution({"dist": "gamma", "mean": 1.0, "cv": 0.7}, "compute")
    expected = dist.sample(stream(3, 0, 11), 3 * BLOCK + 5)
    sampler = Sampler(dist, (3, 0, 11))
    assert [sampler() for _ in range(len(expected))] == expected.tolist()


def test_a_bank_gives_each_streams_sequence_through_refills_and_rewinds():
    dist = parse_distribution({"dist": "exponential", "mean": 1.0}, "compute")
    n, draws = 5, FIRST_BLOCK + BLOCK // 2 + BLOCK + 40
    expected = [dist.sample(stream(9, 0, i), draws) for i in range(n)]
    bank = SamplerBank([Sampler(dist, (9, 0, i)) for i in range(n)])
    got: list[list[float]] = [[] for _ in range(n)]
    rows = np.arange(n)
    for step in range(draws):
        if step % 3 == 2:
            for row in range(n):  # one at a time through the table
                got[row].append(bank.next(row))
        else:
            saved = bank.positions()
            bank.draw(rows[::-1].copy())  # drawn, then taken back: the same values come again
            bank.rewind(saved)
            for row, value in zip(rows.tolist(), bank.draw(rows).tolist()):
                got[row].append(value)
    for row in range(n):
        assert got[row] == expected[row].tolist()


def test_streams_are_kept_across_runs_with_the_same_values(monkeypatch):
    """A second sampler of a stream reads the blocks the first drew (no generator built) and
    goes on drawing from where the stream stands: the stream's own sequence either way."""
    from asgd_sim.timing import streams, workers

    memo = streams.StreamMemo()
    monkeypatch.setattr(workers, "MEMO", memo)
    built = []
    monkeypatch.setattr(workers, "stream", lambda *key: built.append(key) or stream(*key))
    dist = parse_distribution({"dist": "lognormal", "mean": 1.0, "cv": 0.4}, "compute")
    expected = dist.sample(stream(4, 0, 2), FIRST_BLOCK + 3 * BLOCK).tolist()
    first = Sampler(dist, (4, 0, 2))
    assert [first() for _ in range(FIRST_BLOCK + BLOCK // 2 + 1)] == expected[:FIRST_BLOCK + BLOCK // 2 + 1]
    assert built == [(4, 0, 2)]
    second = Sampler(dist, (4, 0, 2))
    assert [second() for _ in range(len(expected))] == expected  # (three blocks read, two drawn)
    assert built == [(4, 0, 2)]
    other = Sampler(parse_distribution({"dist": "exponential", "mean": 1.0}, "compute"), (4, 0, 2))
    other()  # (another distribution on the same stream is another prefix)
    assert built == [(4, 0, 2), (4, 0, 2)]


def test_a_memo_over_its_budget_forgets_the_oldest_streams(monkeypatch):
    from asgd_sim.timing import streams, workers

    memo = streams.StreamMemo(budget=3 * FIRST_BLOCK * 8)  # three first blocks
    monkeypatch.setattr(workers, "MEMO", memo)
    dist = parse_distribution({"dist": "exponential", "mean": 1.0}, "compute")
    for index in range(5):
        Sampler(dist, (1, 0, index))()
    assert [key[0][2] for key in memo.prefixes] == [2, 3, 4]
    assert memo.nbytes == 3 * FIRST_BLOCK * 8
    again = Sampler(dist, (1, 0, 0))
    assert [again() for _ in range(FIRST_BLOCK + 2)] == dist.sample(stream(1, 0, 0), FIRST_BLOCK + 2).tolist()


def test_a_run_gives_the_same_trace_with_its_streams_kept_or_not():
    from asgd_sim.runner import run_timing
    from asgd_sim.scenario.files import load_scenario
    from asgd_sim.timing.streams import MEMO

    sc = load_scenario("scenarios/papers/ringmaster_quadratic.toml", ["workers[0].count=300", "run.until_time=100"])
    MEMO.clear()
    fresh = run_timing(sc).trace
    assert MEMO.prefixes  # (kept for the next run)
    kept = run_timing(sc).trace
    assert fresh.num_gradients > 1000 and fresh.equals(kept)
