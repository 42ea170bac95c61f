"""Property tests: no input gives anything but a Scenario or a ScenarioError; valid ones round-trip."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgd_sim.scenario import schema as V
from asgd_sim.scenario.config import ALGORITHMS, LOCKS, Scenario
from asgd_sim.scenario.distributions import DISTRIBUTIONS
from asgd_sim.errors import ScenarioError
from asgd_sim.scenario.files import dumps_scenario, load_scenario, scenario_from_dict, scenario_to_dict

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SECTIONS: dict[str, dict[str, Any]] = {
    "run": V.RUN, "workers": V.WORKER, "racks": V.RACK, "network": V.NETWORK, "server": V.SERVER,
    "algorithm": V.ALGORITHM, "model": V.MODEL, "data": V.DATA, "optimizer": V.OPTIMIZER,
}
DIST_KEYS = ["dist", "value", "mean", "cv", "shift", "low", "high", "scale", "alpha", "values", "file"]
NESTED_KEYS = sorted({*V.SLOWDOWN, *V.FAILURES, *V.PIPELINE, "min", "max", *DIST_KEYS})
ALL_KEYS = sorted({*SECTIONS, "name", *NESTED_KEYS, *(k for spec in SECTIONS.values() for k in spec)})
WORDS = sorted({*ALGORITHMS, *LOCKS, *DISTRIBUTIONS, *V.MODELS, *V.DATA_SETS, *V.PARTITIONS, *V.LOCK_ORDERS, *V.STALENESS_RULES, "pkg.mod:fn", "a:b", "worker", "r1"})

# ------------------------------------------------------------------- arbitrary TOML-ish trees

scalars = st.one_of(
    st.integers(-2, 12),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.sampled_from(WORDS),
    st.text(max_size=6),
    st.none(),
    st.dates(),
)
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=6))
trees = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=5), max_leaves=20)
dist_tables = st.dictionaries(st.sampled_from(DIST_KEYS), st.one_of(st.sampled_from(sorted(DISTRIBUTIONS)), st.floats(-1, 5), st.integers(-1, 5), st.lists(st.floats(-1, 5), max_size=3)), max_size=4)
nested_tables = st.dictionaries(st.sampled_from(NESTED_KEYS), st.one_of(scalars, st.lists(st.floats(-1, 20), max_size=3)), max_size=4)
def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` nine times in ten, so the fuzz gets past the first checks and reaches the deep ones."""
    return st.integers(0, 9).flatmap(lambda i: rare if i == 0 else usual)


plausible = st.one_of(st.integers(1, 8), st.floats(0.01, 10), st.sampled_from(WORDS), st.booleans(), st.lists(st.integers(1, 8), min_size=1, max_size=3))
field_values = st.one_of(mostly(plausible, scalars), trees, dist_tables, nested_tables, st.lists(nested_tables, max_size=3))


def section_tables(spec: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Tables whose keys are mostly the section's own, so the fuzz gets past the key check."""
    return st.dictionaries(mostly(st.sampled_from(sorted(spec)), keys), field_values, max_size=6)


shaped = st.fixed_dictionaries(
    {},
    optional={
        **{name: section_tables(spec) for name, spec in SECTIONS.items() if name not in ("workers", "racks")},
        "workers": mostly(st.lists(section_tables(V.WORKER), max_size=3), field_values),
        "racks": st.lists(mostly(section_tables(V.RACK).map(lambda t: {"name": "r1"} | t), section_tables(V.RACK)), max_size=2),
    },
)
any_tree = st.one_of(shaped, shaped, shaped, st.dictionaries(keys, trees, max_size=4))  # (a non-table: test_scenario_errors)

real_paths = sorted(f"{section}.{key}" if section not in ("workers", "racks") else f"{section}[0].{key}" for section, spec in SECTIONS.items() for key in spec)
path_parts = st.one_of(st.sampled_from(ALL_KEYS), st.integers(0, 3).map(str), st.integers(0, 3).map(lambda i: f"workers[{i}]"), st.text(max_size=4))
override_values = st.one_of(st.sampled_from(["3", "0", "-1", "2.5", "inf", "nan", "true", "abc", '"global"', "[1, 2]", "{dist='exponential', mean=1}", "{", ""]), st.sampled_from(WORDS), st.text(max_size=8))
override_paths = st.one_of(st.sampled_from(real_paths), st.sampled_from(real_paths), st.lists(path_parts, min_size=1, max_size=4).map(".".join))
overrides = st.lists(st.one_of(st.builds(lambda p, v: f"{p}={v}", override_paths, override_values), st.text(max_size=10)), max_size=3)


def accepted_or_explained(make) -> Scenario | None:
    try:
        scenario = make()
    except ScenarioError as err:
        assert str(err)
        return None
    assert isinstance(scenario, Scenario)
    text = dumps_scenario(scenario)  # whatever is accepted can be written and reads back equal
    assert dumps_scenario(scenario_from_dict(tomllib.loads(text))) == text
    return scenario


@FUZZ
@given(any_tree)
def test_any_tree_gives_a_scenario_or_a_scenario_error(data: Any) -> None:
    accepted_or_explained(lambda: scenario_from_dict(data))


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.toml"


toml_lines = st.one_of(
    st.sampled_from(["[run]", "[server]", "[[workers]]", "[[racks]]", "[model]", "[network]", "[algorithm]", "[", "[[", "]"]),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(ALL_KEYS), override_values),
    st.text(max_size=12),
)
toml_texts = st.one_of(st.text(), st.lists(toml_lines, max_size=8).map("\n".join))


@FUZZ
@given(st.one_of(toml_texts.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=40)))
def test_any_file_gives_a_scenario_or_a_scenario_error(fuzz_file: Path, content: bytes) -> None:
    fuzz_file.write_bytes(content)
    accepted_or_explained(lambda: load_scenario(fuzz_file))


# ------------------------------------------------------------------- valid scenarios

pos = st.floats(1e-6, 1e6)
nonneg = st.floats(0, 1e6)
unit_open = st.floats(0, 1, exclude_min=True, exclude_max=True)


def table(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A table that gives any subset of ``fields`` (a scenario states only what differs)."""
    return st.fixed_dictionaries({}, optional=fields)


dists = st.one_of(
    nonneg,
    st.builds(lambda v: {"dist": "constant", "value": v}, nonneg),
    st.builds(lambda m: {"dist": "exponential", "mean": m}, pos),
    st.builds(lambda s, m: {"dist": "shifted_exponential", "shift": s, "mean": m}, nonneg, pos),
    st.builds(lambda d, m, cv: {"dist": d, "mean": m, "cv": cv}, st.sampled_from(["lognormal", "gamma"]), pos, st.floats(0, 10)),
    st.builds(lambda ab: {"dist": "uniform", "low": min(ab), "high": max(ab)}, st.tuples(nonneg, nonneg)),
    st.builds(lambda s, a: {"dist": "pareto", "scale": s, "alpha": a}, pos, st.floats(1, 50, exclude_min=True)),
    st.builds(lambda v: {"dist": "empirical", "values": v}, st.lists(nonneg, min_size=1, max_size=5)),
)
slowdowns = st.builds(
    lambda points, factors, open_end: [
        {"start": a, "end": math.inf if open_end and i == len(points) // 2 - 1 else b, "factor": f}
        for i, (a, b, f) in enumerate(zip(points[::2], points[1::2], factors))
    ],
    st.lists(st.floats(0, 1e4), max_size=6, unique=True).map(sorted),
    st.lists(st.floats(0.01, 100), min_size=3, max_size=3),
    st.booleans(),
)
failures = st.one_of(
    table(at=st.lists(st.floats(0, 1e4), max_size=4, unique=True).map(sorted), restart_after=nonneg),
    table(mtbf=pos, mttr=pos),
)
pipelines = st.integers(1, 4).flatmap(
    lambda n: table(microbatches=st.integers(1, 8), activation_bytes=nonneg, stage_weights=st.lists(pos, min_size=n, max_size=n)).map(lambda t: {"stages": n, **t})
)
toml_values = st.recursive(
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.booleans(), st.text(max_size=5)),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=6,
)
options = st.dictionaries(st.text(max_size=5), toml_values, max_size=3)


@st.composite
def valid_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    rack_names = draw(st.lists(st.text(min_size=1, max_size=5).filter(str.strip), max_size=2, unique=True))
    racks = [{"name": name, **draw(table(slowdowns=slowdowns))} for name in rack_names]
    group_names = draw(st.lists(st.text(min_size=1, max_size=5).filter(str.strip), min_size=1, max_size=3, unique=True))
    groups = []
    for i, name in enumerate(group_names):
        group = draw(table(count=st.integers(1, 8), compute=dists, stagger=nonneg, slowdowns=slowdowns, failures=failures, pipeline=pipelines))
        if rack_names and draw(st.booleans()):
            group["rack"] = draw(st.sampled_from(rack_names))
        groups.append(group | ({"name": name} if len(group_names) > 1 or draw(st.booleans()) else {}))
    total = sum(g.get("count", 4) for g in groups)
    kind = draw(st.sampled_from(ALGORITHMS))
    algorithm = {"kind": kind, "k": draw(st.integers(1, total if kind.startswith("k_") else 100))}
    if kind == "sync":
        algorithm["backup"] = draw(st.integers(0, total - 1))
    algorithm |= draw(table(staleness_bound=st.integers(0, 10), drop_staleness_above=st.integers(0, 10), local_steps=st.integers(1, 10), elastic_alpha=unit_open))
    model_name = draw(st.sampled_from([*V.MODELS, "pkg.models:build"]))
    heads = draw(st.integers(1, 8))
    model = {"name": model_name, "heads": heads, "width": heads * draw(st.integers(1, 16))}
    model |= draw(table(param_bytes=pos, hidden=st.lists(st.integers(1, 512), max_size=3), noise=nonneg, channels=st.lists(st.integers(1, 64), min_size=1, max_size=3), layers=st.integers(1, 4), context=st.integers(1, 64), options=options))
    if draw(st.booleans()):
        model["eigenvalues"] = draw(st.lists(pos, min_size=1, max_size=5))
        if draw(st.booleans()):
            model["dim"] = len(model["eigenvalues"])
    else:
        model["dim"] = draw(st.integers(1, 100))
        model["eigenvalues"] = draw(st.tuples(pos, pos).map(lambda ab: {"min": min(ab), "max": max(ab)}))
    data_names = [n for n in V.DATA_SETS if n != "none" or model_name not in V.MODELS_NEEDING_DATA]
    tree = {
        "workers": groups,
        "racks": racks,
        "algorithm": algorithm,
        "model": model,
        "run": draw(table(seed=st.integers(0, 2**32), until_updates=st.integers(1, 10**6), until_time=pos, eval_every=st.integers(1, 1000), target_accuracy=st.floats(0, 1, exclude_min=True), max_loss=st.one_of(pos, st.just(math.inf)), window=st.integers(1, 1024), batch_cap=st.integers(1, 256))),
        "network": draw(table(latency=dists, bandwidth=st.one_of(pos, st.just(math.inf)), server_bandwidth=st.one_of(pos, st.just(math.inf)), compression=st.floats(0.01, 10))),
        "server": draw(table(shards=st.integers(1, 16), lock=st.sampled_from(LOCKS), apply_time=dists, atomic=st.booleans(), lock_order=st.sampled_from(V.LOCK_ORDERS))),
        "data": draw(table(name=st.sampled_from(data_names), batch_size=st.integers(1, 512), partition=st.sampled_from(V.PARTITIONS), alpha=pos, test_fraction=unit_open, samples=st.integers(10, 10**5), difficulty=pos, factory=st.just("pkg.data:load"))),
        "optimizer": draw(table(learning_rate=pos, staleness_rule=st.sampled_from([r for r in V.STALENESS_RULES if r != "koloskova"]),
                                staleness_power=pos, dc_lambda=nonneg, dc_adaptive=st.booleans())),
    }
    # Optimizer keys are checked with optax at load, so the valid ones are what optax accepts.
    tree["optimizer"] |= draw(st.one_of(
        st.fixed_dictionaries({}, optional={"name": st.just("sgd"), "options": table(momentum=st.floats(0, 0.99), nesterov=st.booleans())}),
        st.fixed_dictionaries({"name": st.just("adam")}, optional={"options": table(b1=st.floats(0, 0.99), eps=pos)}),
    ))
    if draw(st.booleans()):  # Koloskova's rule needs L
        tree["optimizer"] |= {"staleness_rule": "koloskova", "smoothness": draw(pos)}
    if draw(st.booleans()):
        tree["optimizer"] |= {"schedule": "cosine_decay_schedule", "schedule_options": {"decay_steps": draw(st.integers(1, 10**6))}}
    if draw(st.booleans()):
        tree["name"] = draw(st.text(min_size=1, max_size=8).filter(str.strip))
    return tree


@FUZZ
@given(valid_scenarios())
def test_valid_scenarios_round_trip(tree: dict[str, Any]) -> None:
    scenario = scenario_from_dict(tree)
    resolved = scenario_to_dict(scenario)
    assert scenario_from_dict(resolved) == scenario
    assert scenario_from_dict(tomllib.loads(dumps_scenario(scenario))) == scenario
    assert scenario_to_dict(scenario_from_dict(resolved)) == resolved


@FUZZ
@given(valid_scenarios(), overrides)
def test_any_overrides_give_a_scenario_or_a_scenario_error(tree: dict[str, Any], sets: list[str]) -> None:
    accepted_or_explained(lambda: scenario_from_dict(tree, sets))
