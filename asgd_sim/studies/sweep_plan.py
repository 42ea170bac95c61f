"""The plan of a sweep: the grid, the variants, the tuned keys and seeds, parsed and validated.

`plan_sweep` builds every point's scenario (and, with ``--tune``, every point at every tuned
value) before anything runs, so a bad key or value fails at once with one line naming it, the
point and the fix. `sweep.run_sweep` runs a plan (see `sweep` for the folder it writes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..algorithms import make_policy
from ..errors import ScenarioError
from ..scenario.config import Scenario
from ..scenario.files import dumps_scenario, load_scenario, scenario_to_dict

__all__ = ["Sweep", "Point", "plan_sweep", "parse_grid", "parse_variant", "parse_tune", "parse_value", "split_top_level",
           "FORMAT"]

FORMAT = 1


def split_top_level(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside quotes, brackets and braces: '1,[2,3],{a=1,b=2}' -> 3 parts."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            if char == quote and text[i - 1] != "\\":
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def parse_value(raw: str) -> Any:
    """A TOML value (3, 0.5, "x", true) as the scenario loader reads it, else the bare text."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw
    value = parsed.get("v", raw)
    return raw if isinstance(value, (dict, list)) else value  # tables and arrays: keep the text


def parse_grid(text: str) -> tuple[str, list[str]]:
    """``key=v1,v2,...`` -> (key, [raw values])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError("--grid", f"{text!r}: write key=v1,v2,..., e.g. --grid server.lock=global,shard,none")
    values = split_top_level(raw, ",")
    if any(not v for v in values):
        raise ScenarioError("--grid", f"{text!r}: has an empty value; separate values with single commas, e.g. {key}=1,2,4")
    if len(set(values)) != len(values):
        raise ScenarioError("--grid", f"{text!r}: lists a value twice; give each value once")
    return key, values


def parse_tune(text: str) -> tuple[str, list[str]]:
    """``key=v1,v2,...`` as in --grid, or ``key=log:LOW:HIGH:N``: N values from LOW to HIGH evenly
    spaced on a log scale, each rounded to 3 significant digits (0.001, 0.00316, 0.01, ...)."""
    key, sep, raw = text.partition("=")
    if not raw.strip().startswith("log:"):
        key, values = parse_grid(text)
        return key, values
    parts = raw.strip()[4:].split(":")
    example = f"e.g. --tune {key.strip() or 'optimizer.learning_rate'}=log:0.001:1:7"
    try:
        low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        raise ScenarioError("--tune", f"{text!r}: write key=log:LOW:HIGH:N (N values from LOW to HIGH on a log scale), {example}") from None
    if len(parts) != 3 or not 0 < low < high or count < 2:
        raise ScenarioError("--tune", f"{text!r}: a log range needs 0 < LOW < HIGH and N >= 2, {example}")
    values = list(dict.fromkeys(f"{v:.3g}" for v in np.geomspace(low, high, count)))
    if len(values) < count:
        raise ScenarioError("--tune", f"{text!r}: {count} values rounded to 3 digits repeat; give fewer values or a wider range")
    return key.strip(), values


def _overlaps(a: str, b: str) -> bool:
    """Whether two override keys set the same value (one may be a table holding the other)."""
    return a == b or b.startswith(a + ".") or b.startswith(a + "[") or a.startswith(b + ".") or a.startswith(b + "[")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``label:key=value;key=value`` -> (label, [overrides]); the overrides may be empty."""
    label, sep, raw = text.partition(":")
    label = label.strip()
    if not sep or not label or any(c in label for c in "=/\\") or label.startswith("."):
        raise ScenarioError("--variant", f"{text!r}: write label:key=value[;key=value...], e.g. --variant 'backup:algorithm.kind=sync;algorithm.backup=1'")
    overrides = [o for o in split_top_level(raw, ";") if o]
    for override in overrides:
        if "=" not in override:
            raise ScenarioError("--variant", f"{text!r}: {override!r} is not key=value; separate several overrides with ';'")
    return label, overrides


@dataclass(frozen=True)
class Point:
    """One grid point: its id, label, swept values (column -> value) and the overrides it sets.
    A tuned value (``--tune``) is one too: id ``t<index>``, no scenario of its own."""

    id: str
    label: str
    values: dict[str, Any]
    overrides: tuple[str, ...]
    scenario: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # resolved, seed not yet set


@dataclass
class Sweep:
    """A validated sweep: everything needed to run it, nothing run yet (see `plan_sweep`)."""

    scenario_path: str
    name: str
    base_overrides: list[str]
    grid: list[tuple[str, list[str]]]
    variants: list[tuple[str, list[str]]]
    seeds: int
    timing_only: bool
    base: Scenario
    points: list[Point]
    tune: list[tuple[str, list[str]]] = field(default_factory=list)
    candidates: list[Point] = field(default_factory=list)  # the tuned values (ids t0, t1, ...)
    tuned: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)  # (point id, tuned id): resolved scenario

    @property
    def digest(self) -> str:
        """What makes two sweeps the same experiment: resolved base scenario, grid, variants, tuned keys, mode."""
        what: dict[str, Any] = {"scenario": _base_text(self.base), "grid": self.grid, "variants": self.variants,
                                "timing_only": self.timing_only}
        if self.tune:  # (only when tuned: the hash of an untuned sweep stays what it was)
            what["tune"] = self.tune
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def run_names(self) -> list[tuple[Point, Point | None, int, str]]:
        """(point, tuned value or None, seed, run name) of every run."""
        if not self.candidates:
            return [(p, None, k, f"{p.id}-seed{k}") for p in self.points for k in range(self.seeds)]
        return [(p, c, k, f"{p.id}-{c.id}-seed{k}") for p in self.points for c in self.candidates for k in range(self.seeds)]

    def description(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "hash": self.digest, "scenario": self.scenario_path,
            "scenario_file": str(Path(self.scenario_path).resolve()), "name": self.name,
            "set": self.base_overrides, "grid": [{"key": k, "values": v} for k, v in self.grid],
            "variants": [{"label": label, "set": o} for label, o in self.variants], "seeds": self.seeds,
            "timing_only": self.timing_only, "base_scenario": _base_text(self.base),
            "points": [{"id": p.id, "label": p.label, "values": p.values, "set": list(p.overrides)} for p in self.points],
            **({"tune": [{"key": k, "values": v} for k, v in self.tune],
                "candidates": [{"id": c.id, "label": c.label, "values": c.values, "set": list(c.overrides)} for c in self.candidates]}
               if self.tune else {}),
        }


def _base_text(base: Scenario) -> str:
    # The seed is the sweep's to set, so it is not part of what identifies the experiment.
    return dumps_scenario(dataclasses.replace(base, run=dataclasses.replace(base.run, seed=0)))


def plan_sweep(scenario: str | Path, grid: Sequence[str] = (), variants: Sequence[str] = (), *, seeds: int = 1,
               overrides: Sequence[str] = (), timing_only: bool = False, tune: Sequence[str] = ()) -> Sweep:
    """Parse and validate a sweep: every point's scenario is built (no JAX), so a bad key fails here
    (and with ``tune``, every point at every tuned value)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ScenarioError("--seeds", f"= {seeds!r}: must be an integer >= 1 (seeds 0..N-1 run for every point)")
    base = load_scenario(scenario, list(overrides))
    axes = [parse_grid(g) for g in grid]
    keys = [k for k, _ in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise ScenarioError("--grid", f"{key!r} is given twice; list all its values in one --grid {key}=v1,v2,...")
        if key in ("run.seed", "variant") or key.startswith("run.seed"):
            raise ScenarioError("--grid", f"{key!r}: seeds are set by --seeds N (runs seeds 0..N-1 for every point)"
                                if key.startswith("run.seed") else f"{key!r}: 'variant' is the name of the --variant column; grid a scenario key")
    labelled = [parse_variant(v) for v in variants]
    labels = [label for label, _ in labelled]
    for label in labels:
        if labels.count(label) > 1:
            raise ScenarioError("--variant", f"label {label!r} is used twice; give each variant its own label")
    tuned_axes = [parse_tune(t) for t in tune]
    _refuse_overlaps(keys, labelled, tuned_axes)
    variant_axis: list[tuple[str, list[str]] | None] = list(labelled) if labelled else [None]
    combos = list(itertools.product(variant_axis, *[[(k, v) for v in values] for k, values in axes]))
    width = max(3, len(str(len(combos) - 1)))
    short = _short_names(keys)
    points = []
    for index, (variant, *settings) in enumerate(combos):
        point_overrides = list(variant[1]) if variant else []
        values: dict[str, Any] = {"variant": variant[0]} if variant else {}
        label_parts = [variant[0]] if variant else []
        for key, raw in settings:
            point_overrides.append(f"{key}={raw}")
            values[key] = parse_value(raw)
            label_parts.append(f"{short[key]}={raw}")
        point_id = f"p{index:0{width}d}"
        try:
            resolved = load_scenario(scenario, [*overrides, *point_overrides])
            make_policy(resolved)  # a user algorithm imports and takes its options here, not in a run
        except ScenarioError as error:
            where = ", ".join(label_parts) or "the base scenario"
            raise ScenarioError(error.path, f"{error.detail.replace('(from --set ', '(from --grid/--variant ')} [point {point_id}: {where}]") from None
        points.append(Point(point_id, ", ".join(label_parts) or "base", values, tuple(point_overrides), scenario_to_dict(resolved)))
    candidates = _candidates(tuned_axes)
    tuned: dict[tuple[str, str], dict[str, Any]] = {}
    for point in points:
        for candidate in candidates:
            try:
                resolved = load_scenario(scenario, [*overrides, *point.overrides, *candidate.overrides])
                make_policy(resolved)
            except ScenarioError as error:
                raise ScenarioError(error.path, f"{error.detail.replace('(from --set ', '(from --tune ')} "
                                    f"[point {point.id}: {point.label}, {candidate.label}]") from None
            tuned[(point.id, candidate.id)] = scenario_to_dict(resolved)
    return Sweep(str(scenario), base.name, list(overrides), [(k, v) for k, v in axes], [(label, o) for label, o in labelled],
                 seeds, timing_only, base, points, tuned_axes, candidates, tuned)


def _refuse_overlaps(grid_keys: list[str], variants: list[tuple[str, list[str]]], tune: list[tuple[str, list[str]]]) -> None:
    """A key set by a variant and by the grid (or tuned and set by either) has no single value:
    refuse it instead of letting one silently win."""
    variant_keys = [(label, o.split("=", 1)[0].strip()) for label, sets in variants for o in sets]
    for key in grid_keys:
        for label, other in variant_keys:
            if _overlaps(key, other):
                raise ScenarioError("--grid", f"{key!r} is also set by --variant {label} ({other}); a key takes its value from "
                                    "the grid or from the variants, not both: drop it from one, or make each of its values a variant")
    tuned_keys = [k for k, _ in tune]
    for i, key in enumerate(tuned_keys):
        clash = [f"--grid {k}" for k in grid_keys if _overlaps(key, k)] + [f"--variant {label} ({k})" for label, k in variant_keys
                                                                           if _overlaps(key, k)]
        clash += [f"--tune {k}" for k in tuned_keys[:i] if _overlaps(key, k)]
        if clash:
            raise ScenarioError("--tune", f"{key!r} is also set by {clash[0]}; a tuned key takes its values from --tune only: "
                                "drop it from the grid and the variants")


def _candidates(axes: list[tuple[str, list[str]]]) -> list[Point]:
    """Every combination of the tuned values, as points t0, t1, ... (none without --tune)."""
    if not axes:
        return []
    short = _short_names([k for k, _ in axes])
    combos = list(itertools.product(*[[(k, v) for v in values] for k, values in axes]))
    width = len(str(len(combos) - 1))
    return [Point(f"t{index:0{width}d}", ", ".join(f"{short[k]}={v}" for k, v in combo), {k: parse_value(v) for k, v in combo},
                  tuple(f"{k}={v}" for k, v in combo)) for index, combo in enumerate(combos)]


def _short_names(keys: list[str]) -> dict[str, str]:
    """Labels use the last part of each key (``workers[1].compute.mean`` -> ``mean``) when unique."""
    tails = {key: key.rsplit(".", 1)[-1] for key in keys}
    counts = {t: list(tails.values()).count(t) for t in tails.values()}
    return {key: tail if counts[tail] == 1 else key for key, tail in tails.items()}
