"""`asgd-sim schema`: the JSON Schema of scenario files that TOML editors read (asgd_sim.scenario.json_schema).

Every scenario of the library and a fully resolved scenario must validate; keys and values the
loader refuses must be refused by the schema too (checked against the loader itself, case by case).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from asgd_sim.cli import main
from asgd_sim.errors import ScenarioError
from asgd_sim.scenario.files import dumps_scenario, load_scenario, scenario_from_dict
from asgd_sim.scenario.json_schema import scenario_json_schema

jsonschema = pytest.importorskip("jsonschema")  # in the test extra

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "scenarios").rglob("*.toml"))


@pytest.fixture(scope="module")
def validator():
    schema = scenario_json_schema()
    jsonschema.Draft7Validator.check_schema(schema)  # a well-formed draft-07 schema
    return jsonschema.Draft7Validator(schema)


def _errors(validator, tree):
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(tree)]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT / "scenarios")))
def test_every_library_scenario_validates(validator, path):
    assert _errors(validator, tomllib.loads(path.read_text())) == []


def test_a_resolved_scenario_with_every_key_validates(validator):
    # scenario.toml of a run folder: every default written out
    resolved = tomllib.loads(dumps_scenario(load_scenario(ROOT / "scenarios" / "quickstart.toml")))
    assert "lock_order" in resolved["server"] and "learning_rate" in resolved["optimizer"]
    assert _errors(validator, resolved) == []


BASE = {"run": {"until_updates": 10}, "workers": [{"name": "w", "count": 2, "compute": 0.1}]}

# (a change to BASE, the key the schema must name): each is refused by the loader too (checked below).
BAD = [
    ({"server": {"lok": "global"}}, "server"),                                     # unknown key
    ({"lock": "global"}, ""),                                                        # unknown section
    ({"server": {"lock": "globl"}}, "server.lock"),                                  # not one of the choices
    ({"workers": [{"name": "w", "count": 0, "compute": 0.1}]}, "workers.0.count"),   # below the minimum
    ({"workers": [{"name": "w", "count": 2.5, "compute": 0.1}]}, "workers.0.count"),  # not an integer (JSON Schema counts 2.0 as one)
    ({"workers": [{"name": "w", "count": 2, "compute": {"dist": "exponential", "mean": -1}}]}, "workers.0.compute"),
    ({"workers": [{"name": "w", "count": 2, "compute": {"dist": "exponential", "scale": 1}}]}, "workers.0.compute"),
    ({"network": {"latency": {"dist": "lognormal", "mean": "1 + i", "cv": 0.1}}}, "network.latency"),  # formulas: workers only
    ({"algorithm": {"elastic_alpha": 1.0}}, "algorithm.elastic_alpha"),             # open upper bound
    ({"model": {"hidden": [64, 0]}}, "model.hidden.1"),
    ({"data": {"partition": "clases"}}, "data.partition"),
    ({"optimizer": {"staleness_rule": "inverse tau"}}, "optimizer.staleness_rule"),
    ({"run": {"until_updates": 10, "seed": True}}, "run.seed"),
]


@pytest.mark.parametrize("change,where", BAD, ids=[w or "top" for _, w in BAD])
def test_what_the_loader_refuses_the_schema_refuses(validator, change, where):
    tree = {**BASE, **change}
    with pytest.raises(ScenarioError):
        scenario_from_dict(tree, name="bad")
    errors = _errors(validator, tree)
    assert errors, f"the schema accepts {change}"
    assert any(e.startswith(where + ":") or e.startswith(where + ".") for e in errors) or where == "", errors


def test_formulas_of_the_worker_index_are_allowed_in_worker_compute(validator):
    tree = {**BASE, "workers": [{"name": "w", "count": 4, "compute": {"dist": "half_normal", "shift": "1 + sqrt(i)", "scale": "sqrt(i + 1)"}}]}
    scenario_from_dict(tree, name="ok")
    assert _errors(validator, tree) == []


def test_defaults_and_descriptions_are_offered_to_editors():
    server = scenario_json_schema()["properties"]["server"]["properties"]
    assert server["lock"]["default"] == "shard" and set(server["lock"]["enum"]) == {"none", "shard", "global", "rw"}
    assert scenario_json_schema()["properties"]["run"]["properties"]["eval_every"]["description"] == "updates between evaluations"


def test_cli_prints_the_schema_and_writes_it(tmp_path, capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(scenario_json_schema()))
    out = tmp_path / "scenario.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == printed
    assert "#:schema" in capsys.readouterr().out
