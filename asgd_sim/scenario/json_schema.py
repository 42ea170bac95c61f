"""The JSON Schema of a scenario file, generated from the tables that validate it.

`scenario.schema` gives each parser the JSON Schema of what it accepts; this module assembles them
into one document (draft 07, which taplo / Even Better TOML, VS Code and most editors read), so an
editor completes the keys of a scenario file, shows their defaults and flags an unknown key or a
value out of range as you type. ``asgd-sim schema`` prints it. The schema checks each value on its
own; rules that relate several keys (k <= workers, backup only with sync, ...) are checked when
the scenario is loaded, as before.
"""

from __future__ import annotations

from typing import Any

from .schema import SCENARIO

__all__ = ["scenario_json_schema"]


def scenario_json_schema() -> dict[str, Any]:
    """The scenario file's JSON Schema (a dict, ready for ``json.dumps``)."""
    properties = {key: parse.json_schema for key, parse in SCENARIO.items()}  # type: ignore[attr-defined]
    properties["name"] = {**properties["name"], "description": "the scenario's name (default: the file's name)"}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "asgd-sim scenario",
        "description": "A scenario file of asgd-sim: every key has a default in code, so a file holds only what differs.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
