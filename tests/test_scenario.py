"""Scenario files: defaults, overrides, resolution and round trips (asgd_sim.scenario)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from asgd_sim.scenario.config import Scenario, Slowdown
from asgd_sim.scenario.distributions import Constant, Empirical, Exponential, LogNormal
from asgd_sim.errors import ScenarioError
from asgd_sim.scenario.files import (
    apply_overrides,
    dump_scenario,
    dumps_scenario,
    load_scenario,
    scenario_from_dict,
    scenario_to_dict,
)

RICH = """
name = "rich"

[run]
seed = 7
until_time = 60.0  # both limits apply, whichever comes first

[[racks]]
name = "r1"
slowdowns = [{ start = 10.0, end = 20.0, factor = 3.0 }]

[[workers]]
name = "fast"
count = 6
compute = { dist = "lognormal", mean = 0.05, cv = 0.2 }
rack = "r1"

[[workers]]
name = "slow"
count = 2
compute = { dist = "pareto", scale = 0.1, alpha = 2.5 }
stagger = 0.01
slowdowns = [{ start = 0, end = 5, factor = 0.5 }, { start = 5, end = inf, factor = 2 }]
failures = { at = [1.0, 2.5], mttr = 0.3 }
pipeline = { stages = 2, microbatches = 4, activation_bytes = 1e6, stage_weights = [1.0, 2.0] }

[network]
latency = { dist = "exponential", mean = 0.002 }
bandwidth = inf

[server]
shards = 4
lock = "rw"
atomic = true
lock_order = "random"

[algorithm]
kind = "sync"
backup = 2

[model]
name = "quadratic"
eigenvalues = [0.1, 0.5, 1.0]
options = { scale = 2, tags = ["a", "b"] }

[data]
name = "none"

[optimizer]
name = "adam"
learning_rate = 0.001
options = { b1 = 0.9 }
staleness_rule = "poly"
"""


def write(tmp_path: Path, text: str, name: str = "scen.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, "", "quick.toml"))
    assert s == Scenario(name="quick")
    assert s.num_workers == 4 and s.server.lock == "shard" and s.run.until_updates == 5000


def test_name_from_file_stem_unless_set(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, "", "my_run.toml")).name == "my_run"
    assert load_scenario(write(tmp_path, 'name = "other"\n', "my_run.toml")).name == "other"
    assert scenario_from_dict({}).name == "scenario"
    assert scenario_from_dict({}, name="x").name == "x"


def test_rich_file_parses(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, RICH))
    assert s.name == "rich" and s.run.seed == 7 and s.run.until_time == 60.0 and s.run.until_updates == 5000
    fast, slow = s.workers
    assert fast.compute == LogNormal(0.05, 0.2) and fast.rack == "r1"
    assert slow.slowdowns == (Slowdown(0.0, 5.0, 0.5), Slowdown(5.0, float("inf"), 2.0))
    assert slow.failures.at == (1.0, 2.5) and slow.failures.mttr == 0.3
    assert slow.pipeline is not None and slow.pipeline.stage_weights == (1.0, 2.0)
    assert s.num_workers == 8 and s.algorithm.backup == 2
    assert s.network.latency == Exponential(0.002) and s.network.bandwidth == float("inf")
    assert s.model.dim == 3 and s.model.eigenvalues == (0.1, 0.5, 1.0)  # dim follows the list
    assert s.model.options == {"scale": 2, "tags": ["a", "b"]}
    assert isinstance(s.run.seed, int) and isinstance(slow.stagger, float)


def test_bare_number_is_a_constant_and_ints_become_floats() -> None:
    s = scenario_from_dict({"workers": [{"compute": 1}], "network": {"compression": 1}})
    assert s.workers[0].compute == Constant(1.0)
    assert type(s.network.compression) is float


@pytest.mark.parametrize(
    ("override", "get", "expected"),
    [
        ("run.seed=3", lambda s: s.run.seed, 3),
        ("server.lock=global", lambda s: s.server.lock, "global"),
        ('server.lock="rw"', lambda s: s.server.lock, "rw"),
        ("server.atomic=true", lambda s: s.server.atomic, True),
        ("workers[0].count=9", lambda s: s.workers[0].count, 9),
        ("workers.0.count=9", lambda s: s.workers[0].count, 9),
        ('network.latency={dist="exponential", mean=0.002}', lambda s: s.network.latency, Exponential(0.002)),
        ("network.latency=0.01", lambda s: s.network.latency, Constant(0.01)),
        ("model.hidden=[128,128]", lambda s: s.model.hidden, (128, 128)),
        ("model.hidden[1]=32", lambda s: s.model.hidden, (256, 32)),
        ("model.name=mypkg.models:build", lambda s: s.model.name, "mypkg.models:build"),
        ("model.options.depth=3", lambda s: s.model.options, {"depth": 3}),
        ("network.bandwidth=inf", lambda s: s.network.bandwidth, float("inf")),
        ("run.until_time=2.5", lambda s: (s.run.until_time, s.run.until_updates), (2.5, 5000)),
        ("optimizer.name=adamw", lambda s: s.optimizer.name, "adamw"),
        ("workers=16", lambda s: s.num_workers, 16),
        ("workers[0].failures.at=[1, 2]", lambda s: s.workers[0].failures.at, (1.0, 2.0)),
        ("workers[1]={name='b', count=2}", lambda s: (len(s.workers), s.num_workers), (2, 6)),
    ],
)
def test_override_takes_effect(override: str, get, expected) -> None:
    assert get(scenario_from_dict({}, [override])) == expected


def test_overrides_apply_in_order_and_on_top_of_the_file(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, RICH), ["workers[1].count=3", "run.seed=1", "run.seed=2"])
    assert s.workers[1].count == 3 and s.run.seed == 2 and s.workers[0].count == 6


def test_apply_overrides_copies_and_shapes() -> None:
    data = {"server": {"lock": "none"}}
    out = apply_overrides(data, ["server.lock=global", "workers[0].count=2", "racks[0]={name='r'}"])
    assert data == {"server": {"lock": "none"}}  # the input is not modified
    assert out["server"] == {"lock": "global"}
    assert out["workers"][0]["count"] == 2 and out["racks"] == [{"name": "r"}]


def test_overrides_are_type_checked() -> None:
    with pytest.raises(ScenarioError, match=r"run\.seed.*'abc'.*must be an integer.*--set run\.seed=abc"):
        scenario_from_dict({}, ["run.seed=abc"])
    with pytest.raises(ScenarioError, match="did you mean 'server.lock'"):
        scenario_from_dict({}, ["server.lok=global"])


def test_workers_convenience_needs_one_group() -> None:
    s = scenario_from_dict({"workers": [{"name": "a", "count": 2, "compute": 0.1}]}, ["workers=5"])
    assert s.workers[0].count == 5 and s.workers[0].compute == Constant(0.1)
    two = {"workers": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(ScenarioError, match=r"exactly one \[\[workers\]\] group.*has 2 groups.*workers\[i\]\.count"):
        scenario_from_dict(two, ["workers=5"])


def test_empirical_file_is_resolved_against_the_scenario_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "times.csv").write_text("seconds\n0.1\n0.2\n\n0.4\n")
    path = write(tmp_path, '[[workers]]\ncompute = { dist = "empirical", file = "data/times.csv" }\n')
    monkeypatch.chdir(Path("/"))  # the file's folder, not the working directory, is the base
    s = load_scenario(path)
    assert s.workers[0].compute == Empirical((0.1, 0.2, 0.4))
    dumped = scenario_to_dict(s)["workers"][0]["compute"]
    assert dumped == {"dist": "empirical", "values": [0.1, 0.2, 0.4]}  # the resolved tree needs no CSV
    assert scenario_from_dict(scenario_to_dict(s)) == s
    s2 = scenario_from_dict({"workers": [{"compute": {"dist": "empirical", "file": "data/times.csv"}}]}, base_dir=tmp_path)
    assert s2.workers[0].compute == s.workers[0].compute


def test_resolved_dump_has_every_default(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, "", "empty.toml"))
    tree = tomllib.loads(dumps_scenario(s))
    assert set(tree) == {"name", "run", "workers", "racks", "devices", "network", "server", "algorithm", "model", "data", "optimizer"}
    assert tree["run"] == {"seed": 0, "until_updates": 5000, "eval_every": 100, "max_loss": 1e6, "window": 256, "batch_cap": 64}
    assert tree["workers"] == [{"name": "worker", "count": 4, "compute": {"dist": "constant", "value": 0.05}, "stagger": 0.0, "slowdowns": [], "failures": {"at": []}}]
    assert tree["server"] == {"shards": 1, "lock": "shard", "apply_time": {"dist": "constant", "value": 0.0005},
                              "lock_handoff": {"dist": "constant", "value": 0.0}, "lock_fifo": 1.0, "atomic": False,
                              "lock_order": "sorted"}
    assert tree["model"]["hidden"] == [256, 256] and tree["model"]["eigenvalues"] == {"min": 0.1, "max": 1.0}
    assert set(tree["algorithm"]) == {"kind", "k", "backup", "staleness_bound", "local_steps", "elastic_alpha", "stops", "mixing",
                                      "mixing_decay", "mixing_a", "mixing_b", "options"}  # None left out
    assert set(tree["optimizer"]) == {"name", "learning_rate", "schedule_options", "options", "staleness_rule", "staleness_power", "dc_lambda", "dc_adaptive"}


def test_round_trip_dict_and_toml(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, RICH))
    assert scenario_from_dict(scenario_to_dict(s)) == s
    out = tmp_path / "resolved.toml"
    dump_scenario(s, out)
    assert load_scenario(out) == s
    assert "inf" in out.read_text()  # tomli_w writes infinity as TOML's inf
    assert scenario_to_dict(load_scenario(out)) == scenario_to_dict(s)


def test_round_trip_of_defaults() -> None:
    s = Scenario()
    assert scenario_from_dict(scenario_to_dict(s)) == s
    assert scenario_from_dict(tomllib.loads(dumps_scenario(s))) == s


def test_python_callers_may_pass_tuples_none_and_distributions() -> None:
    s = scenario_from_dict({"model": {"hidden": (8, 8), "param_bytes": None}, "network": {"latency": Exponential(0.5)}, "workers": ({"count": 2, "rack": None},)})
    assert s.model.hidden == (8, 8) and s.model.param_bytes is None and s.network.latency == Exponential(0.5)
    assert s.num_workers == 2


def test_none_is_only_absent_where_the_default_is_none() -> None:
    with pytest.raises(ScenarioError, match=r"run\.until_updates.*None.*must be an integer"):
        scenario_from_dict({"run": {"until_updates": None}})


def test_cross_section_combinations_that_are_allowed() -> None:
    server = scenario_from_dict({"server": {"atomic": True, "lock": "global"}}).server
    assert (server.atomic, server.lock) == (True, "global")
    server = scenario_from_dict({"server": {"atomic": True, "lock": "none"}}).server
    assert (server.atomic, server.lock) == (True, "none")
    assert scenario_from_dict({"server": {"lock_order": "random"}}).server.lock_order == "random"
    algorithm = scenario_from_dict({"algorithm": {"kind": "async", "k": 99}}).algorithm
    assert (algorithm.kind, algorithm.k) == ("async", 99)  # k only matters for k_*
    # Touching windows (the first ends where the second starts) are allowed, and kept as given.
    worker = scenario_from_dict({"workers": [{"slowdowns": [{"start": 0, "end": 1, "factor": 0.5},
                                                            {"start": 1, "end": 2, "factor": 2}]}]}).workers[0]
    assert worker.slowdowns == (Slowdown(start=0.0, end=1.0, factor=0.5), Slowdown(start=1.0, end=2.0, factor=2.0))
    assert [(w.start, w.end, w.factor) for w in worker.slowdowns] == [(0.0, 1.0, 0.5), (1.0, 2.0, 2.0)]
    model = scenario_from_dict({"model": {"name": "quadratic", "eigenvalues": [1.0, 2.0], "dim": 2}}).model
    assert (model.name, model.dim, tuple(model.eigenvalues)) == ("quadratic", 2, (1.0, 2.0))
    user = scenario_from_dict({"model": {"name": "pkg.mod:make"}, "data": {"name": "none"}})
    assert (user.model.name, user.data.name) == ("pkg.mod:make", "none")  # a user model with no data is allowed
    failures = scenario_from_dict({"workers": [{"failures": {"at": [], "mtbf": 5.0}}]}).workers[0].failures
    assert (failures.at, failures.mtbf) == ((), 5.0)  # a resolved dump writes at = [] next to mtbf; that is not "both"


def test_dump_is_deterministic_and_commented() -> None:
    text = dumps_scenario(Scenario())
    assert text.startswith("#") and text == dumps_scenario(Scenario())


def test_a_single_override_string_is_one_override() -> None:
    assert scenario_from_dict({}, "run.seed=4").run.seed == 4  # type: ignore[arg-type]
