"""Scenario files: read TOML, apply ``--set`` overrides, validate, and write the resolved tree.

A scenario file holds only what differs from the defaults in `asgd_sim.scenario.config` (docs/STYLE.md 4)::

    [server]
    lock = "global"          # does one mutex serialise the updates?

    [[workers]]
    count = 8
    compute = { dist = "lognormal", mean = 0.05, cv = 0.3 }

`load_scenario` turns it into the frozen `Scenario`; anything invalid raises `ScenarioError` with
the key path, the bad value, the rule and a fix, never a traceback (the rules live in
`asgd_sim._validate`). `dump_scenario` writes the resolved scenario, every default filled in,
which reads back to an equal `Scenario`.

Overrides are ``key.path=value`` strings (the CLI's ``--set``): ``run.seed=3``,
``workers[1].count=4`` (or ``workers.1.count=4``), ``network.latency={dist="exponential",
mean=0.002}``. The value is read as a TOML value, else taken as a bare string
(``server.lock=global``). ``workers=N`` sets the worker count of a one-group scenario.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from .schema import build_scenario, join, show
from .config import Scenario
from .distributions import Distribution
from ..errors import ScenarioError

__all__ = [
    "load_scenario",
    "scenario_from_dict",
    "apply_overrides",
    "scenario_to_dict",
    "dump_scenario",
    "dumps_scenario",
    "scenario_changes",
]

_HEADER = "# Resolved asgd-sim scenario: every key, with the defaults filled in.\n\n"
_KEY_PART = re.compile(r"([A-Za-z_][\w-]*|\d+)((?:\[\d+\])*)")
_ELEMENTS = {"workers": "worker group", "racks": "rack", "devices": "device"}


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read a TOML scenario file, apply ``overrides`` and validate.

    The scenario is named after the file's stem unless it sets ``name``; an empirical
    distribution's ``file`` is found relative to the scenario file's folder.
    """
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ScenarioError(str(file), "file not found; check the path of the scenario .toml file") from None
    except IsADirectoryError:
        raise ScenarioError(str(file), "is a folder; give the path of a scenario .toml file") from None
    except OSError as err:
        raise ScenarioError(str(file), f"cannot read the file ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ScenarioError(str(file), f"is not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(str(file), f"invalid TOML: {err}{_quote_line(text, str(err))}; fix the syntax there (strings need quotes, "
                            'e.g. lock = "global"; each key once per table; each worker group starts with [[workers]])') from None
    except RecursionError:
        raise ScenarioError(str(file), "invalid TOML: values nested too deeply") from None
    return scenario_from_dict(data, overrides, base_dir=file.parent, name=file.stem)


def _quote_line(text: str, message: str) -> str:
    match = re.search(r"at line (\d+)", message)
    lines = text.splitlines()
    if not match or not 0 < int(match.group(1)) <= len(lines):
        return ""
    line = lines[int(match.group(1)) - 1].strip()
    return f" in {line[:60]!r}" if line else ""


def scenario_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = (), base_dir: Path | None = None, name: str = "scenario") -> Scenario:
    """Validate a raw scenario tree (as TOML gives it) after applying ``overrides``.

    ``base_dir`` resolves relative empirical ``file`` paths; ``name`` is used unless ``data``
    sets ``name``.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError("", f"a scenario must be a table of sections, not {show(data)}")
    try:
        tree = apply_overrides(_plain(data, ""), overrides)
    except RecursionError:
        raise ScenarioError("", "the scenario is nested too deeply") from None
    try:
        return build_scenario(tree, base_dir, name)
    except ScenarioError as err:
        origin = _override_for(err.path, overrides)
        if origin is None:
            raise
        raise ScenarioError(err.path, f"{err.detail} (from --set {origin})") from None


def _plain(value: Any, path: str) -> Any:
    """A deep copy as plain dicts (string keys) and lists, the shapes TOML produces."""
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ScenarioError(path, f"has key {key!r}: keys must be strings")
        return {key: _plain(v, join(path, key)) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


# ---------------------------------------------------------------------------------- overrides


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.path=value`` override applied in order.

    Only the shape is checked here (the key path must reach into tables and existing array
    entries); the values are validated with the rest of the scenario.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError("", f"a scenario must be a table of sections, not {show(data)}")
    result = copy.deepcopy(dict(data))
    for override in _as_list(overrides):
        tokens, value = _parse_override(override)
        if tokens == ["workers"] and isinstance(value, (int, float)) and not isinstance(value, bool):
            _set_worker_count(result, value)
            continue
        node: Any = result
        for depth in range(len(tokens) - 1):
            node = _child(node, tokens, depth)
        _assign(node, tokens, value)
    return result


def _as_list(overrides: Sequence[str] | str) -> Sequence[str]:
    return [overrides] if isinstance(overrides, str) else overrides  # one override, not its characters


def _parse_override(override: Any) -> tuple[list[str | int], Any]:
    if not isinstance(override, str) or "=" not in override:
        raise ScenarioError("", f"--set {show(override)}: missing '='; write key.path=value, e.g. run.seed=3 or workers[1].count=4")
    key, _, raw = override.partition("=")
    tokens: list[str | int] = []
    for part in key.strip().split("."):
        match = _KEY_PART.fullmatch(part)
        if not match:
            raise ScenarioError("", f"--set {override!r}: bad key path {key.strip()!r}; write section.key=value, e.g. server.lock=global or workers[1].count=4")
        name, indices = match.groups()
        tokens.append(int(name) if name.isdigit() else name)
        tokens.extend(int(i) for i in re.findall(r"\d+", indices))
    if isinstance(tokens[0], int):
        raise ScenarioError("", f"--set {override!r}: a key path starts with a section name, e.g. workers[0].count=4")
    return tokens, _parse_value(raw.strip())


def _parse_value(raw: str) -> Any:
    """A TOML value (``3``, ``"x"``, ``[1, 2]``, ``{ dist = "constant", value = 1 }``) or the bare text."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw
    return parsed["v"] if parsed.keys() == {"v"} else raw


def _path(tokens: Sequence[str | int]) -> str:
    out = ""
    for token in tokens:
        out = f"{out}[{token}]" if isinstance(token, int) else join(out, token)
    return out


@functools.cache
def _defaults() -> dict[str, Any]:
    return scenario_to_dict(Scenario())


def _missing(tokens: Sequence[str | int]) -> Any:
    """What a missing table or array on an override's path starts as: a copy of the default
    array (``workers``: one default group), else an empty table. A scalar can't be stepped into."""
    node: Any = _defaults()
    for token in tokens:
        if isinstance(token, int):
            if not isinstance(node, list) or token >= len(node):
                return {}
        elif not isinstance(node, dict) or token not in node:
            return {}
        node = node[token]
    if isinstance(node, list):
        return copy.deepcopy(node)
    if isinstance(node, dict):
        return {}
    raise ScenarioError(_path(tokens), f"= {show(node)} (the default): is not a table or an array, so nothing can be set inside it")


def _child(node: Any, tokens: Sequence[str | int], depth: int) -> Any:
    """Step from ``node`` into ``tokens[depth]``, creating a missing table or default array."""
    token, here = tokens[depth], _path(tokens[: depth + 1])
    if isinstance(token, str):
        if not isinstance(node, dict):
            raise ScenarioError(_path(tokens[:depth]), f"is an array, so write {_path(tokens[:depth])}[i].{token}; there is no key {token!r} in it")
        if node.get(token) is None:
            node[token] = _missing(tokens[: depth + 1])
        child = node[token]
    else:
        _check_index(node, tokens, depth, allow_append=False)
        child = node[token]
    if not isinstance(child, (dict, list)):
        raise ScenarioError(here, f"= {show(child)}: is not a table or an array, so nothing can be set inside it")
    return child


def _check_index(node: Any, tokens: Sequence[str | int], depth: int, *, allow_append: bool) -> None:
    index, parent = tokens[depth], _path(tokens[:depth])
    assert isinstance(index, int)
    if not isinstance(node, list):
        raise ScenarioError(_path(tokens[: depth + 1]), f"{parent} is a table, not an array; write {parent}.key=value")
    n = len(node)
    if index < n or (allow_append and index == n):
        return
    noun = _ELEMENTS.get(str(tokens[depth - 1]))
    counted = f"{n} {noun}{'' if n == 1 else 's'}" if noun else f"{n} entr{'y' if n == 1 else 'ies'}"
    have = f"there {'is' if n == 1 else 'are'} {counted}"
    span = f" ({parent}[0]{f' to {parent}[{n - 1}]' if n > 1 else ''})" if n else ""
    fix = f"add it to the scenario file first, or set a whole new one with --set '{parent}[{n}]={{...}}'"
    raise ScenarioError(_path(tokens[: depth + 1]), f"{have}{span}; {fix}")


def _assign(node: Any, tokens: Sequence[str | int], value: Any) -> None:
    last = tokens[-1]
    if isinstance(last, str):
        if not isinstance(node, dict):
            raise ScenarioError(_path(tokens[:-1]), f"is an array, so write {_path(tokens[:-1])}[i].{last}; there is no key {last!r} in it")
        node[last] = value
        return
    _check_index(node, tokens, len(tokens) - 1, allow_append=True)
    if last == len(node):
        node.append(value)
    else:
        node[last] = value


def _set_worker_count(tree: dict[str, Any], value: Any) -> None:
    """``workers=N``: the total worker count, for a scenario with exactly one group."""
    groups = tree.get("workers")
    if groups is None:
        groups = tree["workers"] = [{}]
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
        n = len(groups) if isinstance(groups, list) else "no array of"
        raise ScenarioError("workers", f"= {show(value)}: sets the worker count only when there is exactly one [[workers]] group; "
                            f"this scenario has {n} groups, so set each one with workers[i].count=N")
    groups[0]["count"] = value


def _override_for(path: str, overrides: Sequence[str]) -> str | None:
    """The last override whose key path contains ``path`` (or lies inside it), if any."""
    found = None
    for override in _as_list(overrides):
        try:
            target = _path(_parse_override(override)[0])
        except ScenarioError:
            continue
        if path and any(a == b or a.startswith(b + ".") or a.startswith(b + "[") for a, b in ((path, target), (target, path))):
            found = override
    return found


# ---------------------------------------------------------------------------------- writing


def scenario_to_dict(scenario: Scenario) -> dict[str, Any]:
    """The resolved tree: every default filled in, distributions as tables, tuples as lists.

    None values are left out (TOML has no null; absent means None for those keys).
    """
    return _to_plain(scenario)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Distribution):
        return _to_plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(v) for f in dataclasses.fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def dumps_scenario(scenario: Scenario) -> str:
    """The resolved scenario as TOML text (reads back to an equal Scenario)."""
    return _HEADER + tomli_w.dumps(scenario_to_dict(scenario))


def dump_scenario(scenario: Scenario, path: str | Path) -> None:
    """Write the resolved scenario to ``path`` (the run directory's copy of what ran)."""
    Path(path).write_text(dumps_scenario(scenario), encoding="utf-8")


def scenario_changes(old: Scenario | dict[str, Any] | str, new: Scenario | dict[str, Any] | str) -> list[str]:
    """What differs between two scenarios (objects, resolved trees or TOML text), one
    ``key: old -> new`` line per leaf key (``workers[0].count: 7 -> 15``), in key order."""
    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(tree, dict):
            return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}.{key}" if prefix else key).items()}
        if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
            return {k: v for i, value in enumerate(tree) for k, v in flat(value, f"{prefix}[{i}]").items()}
        return {prefix: tree}

    def tree(value: Scenario | dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(value, Scenario):
            return scenario_to_dict(value)
        return tomllib.loads(value) if isinstance(value, str) else dict(value)

    before, after = flat(tree(old)), flat(tree(new))
    return [f"{k}: {before.get(k, '(unset)')!r} -> {after.get(k, '(unset)')!r}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
