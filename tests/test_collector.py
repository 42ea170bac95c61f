"""The run path keeps Python's cyclic garbage collector off the objects alive before a run
(`timing.engine.fewer_collections(freeze=True)`): a full collection scans every object alive, JAX's included."""

from __future__ import annotations

import gc

import numpy as np

from asgd_sim.runner import run_timing, simulate
from asgd_sim.scenario.files import scenario_from_dict


def _full_collections_during(run) -> int:  # type: ignore[no-untyped-def]
    full = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    # Many long-lived objects before the run (a notebook's, JAX's): what a full collection would scan.
    ballast = [[i] for i in range(300_000)]
    gc.callbacks.append(count)
    try:
        run()
    finally:
        gc.callbacks.remove(count)
    del ballast
    return len(full)


def test_a_run_sets_off_no_full_collection_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    sc = scenario_from_dict({"workers": [{"count": 3000, "compute": {"dist": "exponential", "mean": 1.0}}],
                             "run": {"until_updates": 30_000}, "server": {"lock": "global", "apply_time": 0.0}})
    assert _full_collections_during(lambda: run_timing(sc)) == 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    small = scenario_from_dict({"workers": [{"count": 4, "compute": 0.01}], "run": {"until_updates": 50, "eval_every": 25},
                                "model": {"name": "logreg"}})
    simulate(small)  # the first run of a process imports JAX and compiles (its own allocations)
    assert _full_collections_during(lambda: simulate(small)) == 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_cycles_a_run_makes_are_still_collected() -> None:
    # The collector is quieter during a run, not off: garbage in reference cycles is freed.
    import weakref

    class Node:
        pass

    def make_cycle() -> weakref.ref:
        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        return weakref.ref(a)

    from asgd_sim.timing.engine import fewer_collections

    with fewer_collections(freeze=True):
        ref = make_cycle()
        junk = [np.zeros(1).tolist() for _ in range(250_000)]  # allocations: young collections run
        del junk
        gc.collect(0)
        assert ref() is None


def test_runs_allocate_on_small_pages_and_restore_the_setting():
    """`runner.small_pages`: numpy's huge-page advice is off inside a run, as it was after."""
    from numpy._core.multiarray import _set_madvise_hugepage

    from asgd_sim.runner import small_pages

    before = _set_madvise_hugepage(True)
    try:
        with small_pages():
            assert _set_madvise_hugepage(False) is False  # (returns the setting it replaces)
        assert _set_madvise_hugepage(True) is True
    finally:
        _set_madvise_hugepage(before)
