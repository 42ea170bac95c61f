"""Every bad scenario is a ScenarioError naming the key path, the bad value, the rule and a fix.

Each case is ``(source, expected substrings)``. ``source`` is the text of a scenario file; its
lines that start with ``--set `` are overrides applied on top of it (an override-only case has
no other lines).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from asgd_sim.errors import ScenarioError
from asgd_sim.scenario.files import load_scenario, scenario_from_dict

TWO_GROUPS = '[[workers]]\nname = "a"\n[[workers]]\nname = "b"\n'

CASES = {
    # unknown keys, with and without a suggestion
    "unknown-key": ('[server]\nlok = "global"', ["server.lok", "unknown key", "did you mean 'server.lock'?"]),
    "unknown-section": ("[netwrok]\nbandwidth = 1", ["'netwrok'", "unknown key", "did you mean 'network'?"]),
    "unknown-group-key": ("[[workers]]\ncont = 3", ["workers[0].cont", "did you mean 'workers[0].count'?"]),
    "unknown-key-no-hint": ("[run]\nzzz = 1", ["run.zzz", "unknown key", "run takes seed, until_updates"]),
    "unknown-dist-param": ('[network]\nlatency = { dist = "exponential", mean = 1, men = 2 }', ["network.latency.men", "unknown parameter", "did you mean 'mean'?"]),
    # types
    "int-given-string": ("[run]\nseed = 'abc'", ["run.seed", "'abc'", "must be an integer"]),
    "int-given-float": ("[server]\nshards = 2.0", ["server.shards", "2.0", "must be an integer", "write 2, not 2.0"]),
    "bool-given-string": ('[server]\natomic = "yes"', ["server.atomic", "'yes'", "must be true or false"]),
    "number-given-bool": ("[network]\nbandwidth = true", ["network.bandwidth", "true", "must be a number"]),
    "nan": ("[optimizer]\nlearning_rate = nan", ["optimizer.learning_rate", "nan", "not NaN"]),
    "name-empty": ('name = ""', ["name", "''", "non-empty string"]),
    "options-not-table": ("[optimizer]\noptions = 3", ["optimizer.options", "= 3", "must be a table"]),
    "workers-as-table": ("[workers]\ncount = 3", ["workers", "{'count': 3}", "array of tables", "[[workers]]"]),
    "workers-empty": ("workers = []", ["workers", "[]", "at least one", "[[workers]]"]),
    # ranges
    "seed-negative": ("[run]\nseed = -1", ["run.seed", "-1", "must be an integer >= 0"]),
    "until-updates-zero": ("[run]\nuntil_updates = 0", ["run.until_updates", "= 0", "must be an integer >= 1"]),
    "until-time-inf": ("[run]\nuntil_time = inf", ["run.until_time", "inf", "> 0 and finite"]),
    "target-accuracy": ("[run]\ntarget_accuracy = 1.5", ["run.target_accuracy", "1.5", "in (0, 1]"]),
    "count-zero": ("[[workers]]\ncount = 0", ["workers[0].count", "0", ">= 1"]),
    "bandwidth-zero": ("[network]\nbandwidth = 0", ["network.bandwidth", "0", "must be > 0"]),
    "compression-zero": ("[network]\ncompression = 0.0", ["network.compression", "0.0", "> 0 and finite", "4x compression"]),
    "elastic-alpha": ("[algorithm]\nelastic_alpha = 1", ["algorithm.elastic_alpha", "1", "in (0, 1)"]),
    "test-fraction": ("[data]\ntest_fraction = 1.0", ["data.test_fraction", "1.0", "in (0, 1)"]),
    "samples-small": ("[data]\nsamples = 5", ["data.samples", "5", ">= 10"]),
    "param-bytes": ("[model]\nparam_bytes = 0", ["model.param_bytes", "0", "> 0"]),
    "hidden-zero": ("[model]\nhidden = [64, 0]", ["model.hidden[1]", "0", ">= 1"]),
    # choices, with a suggestion
    "bad-lock": ('[server]\nlock = "globl"', ["server.lock", "'globl'", "unknown lock", "none, shard, global, rw", "did you mean 'global'?"]),
    "bad-lock-order": ('[server]\nlock_order = "randm"', ["server.lock_order", "'randm'", "sorted, random", "did you mean 'random'?"]),
    "bad-algorithm": ('[algorithm]\nkind = "asyn"', ["algorithm.kind", "'asyn'", "unknown algorithm", "async, sync", "did you mean 'async'?"]),
    "bad-partition": ('[data]\npartition = "dirichelt"', ["data.partition", "'dirichelt'", "iid, dirichlet", "did you mean 'dirichlet'?"]),
    "bad-staleness-rule": ('[optimizer]\nstaleness_rule = "inverce"', ["optimizer.staleness_rule", "did you mean 'inverse'?"]),
    "bad-model": ('[model]\nname = "mpl"', ["model.name", "'mpl'", "unknown model", "pkg.module:factory", "did you mean 'mlp'?"]),
    "bad-factory-form": ('[model]\nname = "pkg.mod:"', ["model.name", "'pkg.mod:'", "'pkg.module:factory'"]),
    "bad-data-factory": ('[data]\nfactory = "nocolon"', ["data.factory", "'nocolon'", "'pkg.module:factory'"]),
    # distributions
    "dist-unknown": ('[[workers]]\ncompute = { dist = "normal", mean = 1 }', ["workers[0].compute.dist", "'normal'", "unknown distribution", "lognormal"]),
    "dist-missing-param": ('[[workers]]\ncompute = { dist = "lognormal", mean = 0.05 }', ["workers[0].compute.cv", "missing", "mean, cv"]),
    "dist-negative-cv": (TWO_GROUPS + 'compute = { dist = "lognormal", mean = 0.05, cv = -0.3 }', ["workers[1].compute.cv", "-0.3", "must be >= 0", "coefficient of variation"]),
    "dist-pareto-alpha-1": ('[[workers]]\ncompute = { dist = "pareto", scale = 1, alpha = 1 }', ["workers[0].compute.alpha", "1.0", "must be > 1", "infinite mean"]),
    "dist-uniform-swapped": ('[server]\napply_time = { dist = "uniform", low = 2, high = 1 }', ["server.apply_time.high", "1.0", "must be >= low (2.0)", "swap"]),
    "dist-empirical-empty": ('[network]\nlatency = { dist = "empirical", values = [] }', ["network.latency.values", "no durations"]),
    "dist-empirical-no-file": ('[network]\nlatency = { dist = "empirical", file = "nope.csv" }', ["network.latency.file", "'nope.csv'", "file not found"]),
    "dist-no-dist-key": ("[network]\nlatency = { mean = 0.1 }", ["network.latency", "needs 'dist'", "bare number"]),
    "dist-negative-constant": ("[[workers]]\ncompute = -1", ["workers[0].compute", "-1", ">= 0"]),
    "dist-negative-handoff": ("[server]\nlock_handoff = -0.001", ["server.lock_handoff", "-0.001", ">= 0", "seconds"]),
    # slowdowns and failures
    "slowdown-end-before-start": ("[[workers]]\nslowdowns = [{ start = 10, end = 5, factor = 2 }]", ["workers[0].slowdowns[0].end", "5.0", "must be > start (10.0)"]),
    "slowdown-overlap": (
        "[[workers]]\nslowdowns = [{ start = 0, end = 10, factor = 2 }, { start = 5, end = 15, factor = 3 }]",
        ["workers[0].slowdowns[1]", "[5.0, 15.0)", "overlaps workers[0].slowdowns[0]", "[0.0, 10.0)", "must not overlap"],
    ),
    "slowdown-missing-factor": ("[[workers]]\nslowdowns = [{ start = 0, end = 1 }]", ["workers[0].slowdowns[0].factor", "missing", "start, end, factor"]),
    "slowdown-factor-zero": ("[[racks]]\nname = 'r'\nslowdowns = [{ start = 0, end = 1, factor = 0 }]", ["racks[0].slowdowns[0].factor", "0", "must be > 0"]),
    "failures-at-and-mtbf": ("[[workers]]\nfailures = { at = [1.0], mtbf = 5.0 }", ["workers[0].failures", "both 'at'", "'mtbf'", "keep one"]),
    "failures-restart-and-mttr": ("[[workers]]\nfailures = { restart_after = 1.0, mttr = 5.0 }", ["workers[0].failures", "'restart_after'", "'mttr'", "keep one"]),
    "failures-unsorted": ("[[workers]]\nfailures = { at = [5.0, 2.0] }", ["workers[0].failures.at", "[5.0, 2.0]", "sorted ascending"]),
    # cross-references and cross-section rules
    "unknown-rack": ("[[racks]]\nname = 'aisle_1'\n[[racks]]\nname = 'aisle_2'\n[[workers]]\nrack = 'aisle1'", ["workers[0].rack", "'aisle1'", "unknown rack", "known racks: aisle_1, aisle_2", "did you mean 'aisle_1'?"]),
    "rack-without-racks": ("[[workers]]\nrack = 'hot'", ["workers[0].rack", "'hot'", "no racks are defined", "[[racks]]"]),
    "rack-without-name": ("[[racks]]\nslowdowns = []", ["racks[0].name", "missing", "a rack needs name"]),
    "duplicate-group-name": ('[[workers]]\nname = "a"\n[[workers]]\nname = "a"', ["workers[1].name", "'a'", "duplicate name", "workers[0]"]),
    "k-above-workers": ('[algorithm]\nkind = "k_async"\nk = 8', ["algorithm.k", "= 8", "number of workers (4)", "'k_async'"]),
    "backup-with-async": ("[algorithm]\nbackup = 1", ["algorithm.backup", "= 1", "kind = 'sync' only", "'async'"]),
    "backup-all-workers": ('[algorithm]\nkind = "sync"\nbackup = 4', ["algorithm.backup", "= 4", "< the number of workers (4)"]),
    "stage-weights-length": ("[[workers]]\npipeline = { stages = 3, stage_weights = [1.0, 2.0] }", ["workers[0].pipeline.stage_weights", "[1.0, 2.0]", "one weight per stage: 3"]),
    "width-heads": ("[model]\nwidth = 65", ["model.width", "65", "multiple of heads (4)"]),
    "eigen-dim-mismatch": ("[model]\ndim = 3\neigenvalues = [1.0, 2.0]", ["model.dim", "3", "number of eigenvalues (2)"]),
    "eigen-min-above-max": ("[model]\neigenvalues = { min = 2.0, max = 1.0 }", ["model.eigenvalues.max", "1.0", "must be >= min (2.0)"]),
    "data-none-for-mlp": ('[data]\nname = "none"', ["data.name", "'none'", "model 'mlp'", "digits, mnist1d, synthetic, text"]),
    # TOML syntax
    "toml-unquoted-string": ("[server]\nshards = 2\nlock = global\n", ["scen.toml", "invalid TOML", "line 3", "'lock = global'", "quotes"]),
    "toml-duplicate-key": ("[run]\nseed = 1\nseed = 2\n", ["scen.toml", "invalid TOML", "line 3"]),
    # overrides
    "set-no-equals": ("--set run.seed", ["--set 'run.seed'", "missing '='", "key.path=value"]),
    "set-bad-path": ("--set run..seed=3", ["'run..seed'", "bad key path", "workers[1].count=4"]),
    "set-unknown-key": ("--set server.lok=global", ["server.lok", "did you mean 'server.lock'?", "--set server.lok=global"]),
    "set-bad-type": ("--set run.seed=abc", ["run.seed", "'abc'", "must be an integer", "--set run.seed=abc"]),
    "set-float-for-int": ("--set workers[0].count=2.5", ["workers[0].count", "2.5", "must be an integer"]),
    "set-missing-group": ("--set workers[1].count=4", ["workers[1]", "there is 1 worker group (workers[0])"]),
    "set-missing-group-of-two": (TWO_GROUPS + "--set workers.5.name=x", ["workers[5]", "there are 2 worker groups (workers[0] to workers[1])"]),
    "set-index-into-table": ("--set server[0].lock=none", ["server[0]", "server is a table, not an array"]),
    "set-key-into-array": ("--set workers.count=3", ["workers", "is an array", "workers[i].count"]),
    "set-into-scalar": ("--set run.seed.x=3", ["run.seed", "not a table"]),
    "set-workers-two-groups": (TWO_GROUPS + "--set workers=8", ["workers", "= 8", "exactly one [[workers]] group", "workers[i].count"]),
    "set-bad-dist": ('--set network.latency={dist="exponental", mean=1}', ["network.latency.dist", "'exponental'", "did you mean 'exponential'?"]),
    "set-bad-lock": ("--set server.lock=globl", ["server.lock", "'globl'", "did you mean 'global'?"]),
}


@pytest.mark.parametrize(("source", "expected"), list(CASES.values()), ids=list(CASES))
def test_bad_scenario_is_explained(tmp_path: Path, source: str, expected: list[str]) -> None:
    lines = source.splitlines()
    overrides = [line.removeprefix("--set ") for line in lines if line.startswith("--set ")]
    path = tmp_path / "scen.toml"
    path.write_text("\n".join(line for line in lines if not line.startswith("--set ")) + "\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message.strip()


def test_there_are_enough_distinct_cases() -> None:
    assert len(CASES) >= 35 and len({source for source, _ in CASES.values()}) == len(CASES)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nope\.toml.*file not found"):
        load_scenario(tmp_path / "nope.toml")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="is a folder"):
        load_scenario(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(path)


def test_error_carries_the_path() -> None:
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict({"workers": [{}, {"name": "b", "compute": {"dist": "gamma", "mean": 1, "cv": -1}}]})
    assert info.value.path == "workers[1].compute.cv"


@pytest.mark.parametrize("data", [3, "text", ["a"], {1: 2}, {"run": {2: 3}}])
def test_not_a_table_of_sections(data) -> None:
    with pytest.raises(ScenarioError):
        scenario_from_dict(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("override", [3, None, "", "=", "workers[x].count=3", "0.seed=1"])
def test_malformed_overrides(override) -> None:
    with pytest.raises(ScenarioError):
        scenario_from_dict({}, [override])  # type: ignore[list-item]
