"""The scenario schema: a raw tree (plain dicts and lists, as TOML gives) -> the typed `Scenario`.

Each section is a table ``key -> parser``. A parser turns one raw value into its typed value or
raises `ScenarioError` naming the key path, the bad value, the rule and, where useful, the fix
(docs/STYLE.md 6). Rules that relate several keys run once their section (or the whole scenario) is
built. Everything is checked here, at construction, so the engines never see a bad value.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import (
    ALGORITHMS,
    LOCKS,
    STALENESS_RULES,
    AlgorithmConfig,
    DataConfig,
    Device,
    Failures,
    ModelConfig,
    NetworkConfig,
    OptimizerConfig,
    Pipeline,
    Rack,
    RunConfig,
    Scenario,
    ServerConfig,
    Slowdown,
    WorkerGroup,
)
from .distributions import Distribution, bind_to_group, distribution_json_schema, parse_distribution, reject_formulas
from .messages import bad, join, reject_unknown, show
from .messages import did_you_mean as _did_you_mean
from .messages import why_text as _why
from .optimizer import check_optimizer
from .plugins import OBJECT_PATH, is_object_path
from ..errors import ScenarioError

__all__ = ["build_scenario", "show", "join"]

Parser = Callable[[Any, str, "Path | None"], Any]

MODELS = ("quadratic", "worst_case_quadratic", "least_squares", "logreg", "mlp", "cnn", "transformer")
MODELS_NEEDING_DATA = ("logreg", "mlp", "cnn", "transformer")
DATA_SETS = ("digits", "mnist1d", "synthetic", "text", "none")
PARTITIONS = ("iid", "dirichlet", "classes", "shared")
LOCK_ORDERS = ("sorted", "random")
NOISE_MODES = ("independent", "shared")
MIXING_DECAYS = ("constant", "polynomial", "hinge")
_TOML_SCALARS = (str, bool, int, float, datetime.date, datetime.time)  # datetime is a date


# ---------------------------------------------------------------------------------- parsers
# Each parser carries the JSON Schema of what it accepts (``parser.json_schema``), so the schema
# editors check files against (`scenario.json_schema`, ``asgd-sim schema``) is generated from the
# same tables that validate a scenario and cannot drift from them.


def describe(parse: Parser, fragment: dict[str, Any]) -> Parser:
    parse.json_schema = fragment  # type: ignore[attr-defined]
    return parse


def _text_of(why: str) -> dict[str, str]:
    return {"description": why} if why else {}


def integer(low: int, why: str = "") -> Parser:
    def parse(value: Any, path: str, base_dir: Path | None) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            hint = f" (write {int(value)}, not {value!r})" if isinstance(value, float) and value.is_integer() else ""
            raise bad(path, value, f"must be an integer{hint}")
        if value < low:
            raise bad(path, value, f"must be an integer >= {low}{_why(why)}")
        return int(value)

    return describe(parse, {"type": "integer", "minimum": low, **_text_of(why)})


def number(low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False, inf: bool = False, why: str = "") -> Parser:
    """A float in a range; an int is accepted (and stored as a float). ``inf``: +inf allowed."""
    if low is not None and high is not None:
        rule = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
        rule = f"{'>' if open_low else '>='} {low:g}"
    else:
        rule = "a number"
    rule = f"must be {rule}" + ("" if inf else " and finite") + _why(why)

    def parse(value: Any, path: str, base_dir: Path | None) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad(path, value, f"must be a number{_why(why)}")
        try:
            x = float(value)
        except OverflowError:
            raise bad(path, value, "must be a finite number") from None
        if math.isnan(x):
            raise bad(path, value, f"must be a number, not NaN{_why(why)}")
        above = low is None or (x > low if open_low else x >= low)
        below = high is None or (x < high if open_high else x <= high)
        if not (above and below and (inf or math.isfinite(x))):
            raise bad(path, value, rule)
        return x

    bounds = {**({} if low is None else {"exclusiveMinimum" if open_low else "minimum": low}),
              **({} if high is None else {"exclusiveMaximum" if open_high else "maximum": high})}
    return describe(parse, {"type": "number", **bounds, **_text_of(why)})


def boolean(value: Any, path: str, base_dir: Path | None) -> bool:
    if not isinstance(value, bool):
        raise bad(path, value, "must be true or false")
    return value


describe(boolean, {"type": "boolean"})


def choice(options: Sequence[str], what: str) -> Parser:
    def parse(value: Any, path: str, base_dir: Path | None) -> str:
        if not isinstance(value, str) or value not in options:
            raise bad(path, value, f"unknown {what}; choose one of {', '.join(options)}{_did_you_mean(value, options)}")
        return value

    return describe(parse, {"enum": list(options), "description": what})


def text(value: Any, path: str, base_dir: Path | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(path, value, "must be a non-empty string")
    return value


def factory(value: Any, path: str, base_dir: Path | None) -> str:
    if not is_object_path(value):
        raise bad(path, value, "must be a 'pkg.module:factory' string (a dotted module path, ':', then a function name)")
    return value


describe(text, {"type": "string", "minLength": 1})
OBJECT_PATH_SCHEMA = {"type": "string", "pattern": f"^{OBJECT_PATH.pattern}$"}
describe(factory, {**OBJECT_PATH_SCHEMA, "description": "'pkg.module:factory'"})


def builtin_or_path(options: Sequence[str], what: str, example: str) -> Parser:
    """One of ``options``, or the user's own, written like ``example`` ('pkg.module:name')."""

    def parse(value: Any, path: str, base_dir: Path | None) -> str:
        if isinstance(value, str) and (value in options or is_object_path(value)):
            return value
        if isinstance(value, str) and ":" in value:
            return factory(value, path, base_dir)
        raise bad(path, value, f"unknown {what}; choose one of {', '.join(options)}, or name your own as "
                  f"'{example}'{_did_you_mean(value, options)}")

    return describe(parse, {"anyOf": [{"enum": list(options)}, OBJECT_PATH_SCHEMA], "description": f"{what}, or your own '{example}'"})


model_name = builtin_or_path(MODELS, "model", "pkg.module:factory")


def dist(value: Any, path: str, base_dir: Path | None) -> Any:
    return reject_formulas(parse_distribution(value, path, base_dir), path)


describe(dist, distribution_json_schema(formulas=False))


def worker_dist(value: Any, path: str, base_dir: Path | None) -> Any:
    """A worker group's distribution: its parameters may be formulas of the worker index, which the
    group's check binds to its count (`_check_group`)."""
    return parse_distribution(value, path, base_dir)


describe(worker_dist, distribution_json_schema(formulas=True))


def list_of(item: Parser, *, nonempty: bool = False, what: str = "numbers") -> Parser:
    def parse(value: Any, path: str, base_dir: Path | None) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise bad(path, value, f"must be a list of {what}")
        if nonempty and not value:
            raise bad(path, value, f"must list at least one of {what}")
        return tuple(item(v, f"{path}[{i}]", base_dir) for i, v in enumerate(value))

    return describe(parse, {"type": "array", "items": item.json_schema, **({"minItems": 1} if nonempty else {})})  # type: ignore[attr-defined]


def toml_table(value: Any, path: str, base_dir: Path | None) -> dict[str, Any]:
    """Free-form options: any table TOML can hold (so the resolved scenario can be written)."""

    def copy(v: Any, where: str) -> Any:
        if isinstance(v, dict):
            for key in v:
                if not isinstance(key, str):
                    raise bad(where, key, "table keys must be strings")
            return {k: copy(x, join(where, k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [copy(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if not isinstance(v, _TOML_SCALARS):
            raise bad(where, v, "must be a TOML value (string, number, boolean, date, list or table)")
        return v

    if not isinstance(value, dict):
        raise bad(path, value, "must be a table, e.g. { b1 = 0.9 }")
    return copy(value, path)


describe(toml_table, {"type": "object", "description": "free-form options (any TOML table)"})


def eigenvalues(value: Any, path: str, base_dir: Path | None) -> Any:
    """A spectrum: ``{min, max}`` (spread over dim) or an explicit list of positive values."""
    positive = number(0, open_low=True, why="eigenvalues of a quadratic must be positive")
    if isinstance(value, dict):
        reject_unknown(value, ("min", "max"), path)
        default = ModelConfig().eigenvalues
        low = positive(value.get("min", default["min"]), f"{path}.min", base_dir)
        high = positive(value.get("max", default["max"]), f"{path}.max", base_dir)
        if high < low:
            raise bad(f"{path}.max", high, f"must be >= min ({low!r}); swap them")
        return {"min": low, "max": high}
    if isinstance(value, (list, tuple)):
        return list_of(positive, nonempty=True, what="positive eigenvalues")(value, path, base_dir)
    raise bad(path, value, "must be a table { min = 0.1, max = 1.0 } or a list of positive eigenvalues")


_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
describe(eigenvalues, {"anyOf": [
    {"type": "object", "properties": {"min": _POSITIVE, "max": _POSITIVE}, "additionalProperties": False},
    {"type": "array", "items": _POSITIVE, "minItems": 1}], "description": "{ min, max } spread over dim, or a list"})


# ---------------------------------------------------------------------------------- sections

Check = Callable[[Any, dict[str, Any], str], Any]  # (built object, raw table, path) -> object


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(path, value, "must be a table ({ key = value, ... }, or a [section] in the file)")
    return value


def build(cls: type, table: dict[str, Any], path: str, spec: dict[str, Parser], base_dir: Path | None, what: str) -> Any:
    """Build dataclass ``cls`` from ``table``: unknown keys rejected, absent keys left default.

    ``None`` (which TOML cannot write) counts as absent where the default is None; elsewhere the
    parser rejects it with its usual message.
    """
    reject_unknown(table, tuple(spec), path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [k for k, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    kwargs = {}
    for key, parse in spec.items():
        value = table.get(key)
        if key not in table or (value is None and fields[key].default is None):
            if key in required:
                raise ScenarioError(join(path, key), f"missing; {what} needs {', '.join(required)}")
            continue
        kwargs[key] = parse(value, join(path, key), base_dir)
    return cls(**kwargs)


def section(cls: type, spec: dict[str, Parser], what: str, check: Check | None = None) -> Parser:
    def parse(value: Any, path: str, base_dir: Path | None) -> Any:
        table = _table(value, path)
        obj = build(cls, table, path, spec, base_dir, what)
        return check(obj, table, path) if check else obj

    return describe(parse, table_json_schema(cls, spec, what))


def table_json_schema(cls: type, spec: dict[str, Parser], what: str) -> dict[str, Any]:
    """The JSON Schema of a table built by `build`: its keys (with their defaults where JSON can
    hold them), no others, and the keys without a default required."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    properties = {}
    for key, parse in spec.items():
        fragment = dict(parse.json_schema)  # type: ignore[attr-defined]
        default = fields[key].default
        if isinstance(default, (bool, int, float, str)) and not (isinstance(default, float) and not math.isfinite(default)):
            fragment["default"] = default
        properties[key] = fragment
    required = [k for k in spec if fields[k].default is dataclasses.MISSING and fields[k].default_factory is dataclasses.MISSING]
    return {"type": "object", "description": what, "properties": properties, "additionalProperties": False,
            **({"required": required} if required else {})}


def array(item: Parser, toml_name: str, *, nonempty: bool = False) -> Parser:
    """An array of tables, ``[[toml_name]]`` in a file; elements are at ``path[i]``."""

    def parse(value: Any, path: str, base_dir: Path | None) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise bad(path, value, f"must be an array of tables; write [[{toml_name}]] (double brackets) before each entry")
        if nonempty and not value:
            raise bad(path, value, f"needs at least one entry; add a [[{toml_name}]] table")
        return tuple(item(v, f"{path}[{i}]", base_dir) for i, v in enumerate(value))

    return describe(parse, {"type": "array", "items": item.json_schema, **({"minItems": 1} if nonempty else {})})  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- rules


def _check_slowdown(s: Slowdown, table: dict[str, Any], path: str) -> Slowdown:
    if not s.end > s.start:
        raise bad(f"{path}.end", s.end, f"must be > start ({s.start!r}); a slowdown covers [start, end) seconds")
    return s


def _slowdowns(value: Any, path: str, base_dir: Path | None) -> tuple[Slowdown, ...]:
    windows = list_of(section(Slowdown, SLOWDOWN, "a slowdown", _check_slowdown), what="{ start, end, factor } tables")(value, path, base_dir)
    order = sorted(range(len(windows)), key=lambda i: windows[i].start)
    for i, j in zip(order, order[1:]):
        if windows[j].start < windows[i].end:
            a, b = windows[i], windows[j]
            raise ScenarioError(
                f"{path}[{j}]",
                f"= [{b.start!r}, {b.end!r}): overlaps {path}[{i}] = [{a.start!r}, {a.end!r}); "
                "windows of one group must not overlap (split them, multiplying the factors where they meet)",
            )
    return windows


def _check_failures(f: Failures, table: dict[str, Any], path: str) -> Failures:
    for i, (t0, t1) in enumerate(zip(f.at, f.at[1:])):
        if not t1 > t0:
            raise bad(f"{path}.at", list(f.at), f"must be sorted ascending without repeats (at[{i + 1}] = {t1!r} follows {t0!r})")
    if f.at and f.mtbf is not None:
        raise ScenarioError(path, "gives both 'at' (fixed crash times) and 'mtbf' (random crashes); keep one")
    if f.restart_after is not None and f.mttr is not None:
        raise ScenarioError(path, "gives both 'restart_after' (fixed down time) and 'mttr' (random down time); keep one")
    return f


def _check_group(g: WorkerGroup, table: dict[str, Any], path: str) -> WorkerGroup:
    return dataclasses.replace(g, compute=bind_to_group(g.compute, g.count)) if isinstance(g.compute, Distribution) else g


def _check_pipeline(p: Pipeline, table: dict[str, Any], path: str) -> Pipeline:
    if p.stage_weights and len(p.stage_weights) != p.stages:
        raise bad(f"{path}.stage_weights", list(p.stage_weights), f"must give one weight per stage: {p.stages} (stages), not {len(p.stage_weights)}")
    return p


def _check_run(r: RunConfig, table: dict[str, Any], path: str) -> RunConfig:
    if r.until_updates is None and r.until_time is None:
        raise ScenarioError(path, "sets no stopping rule; give until_updates or until_time")
    return r


def _check_model(m: ModelConfig, table: dict[str, Any], path: str) -> ModelConfig:
    if isinstance(m.eigenvalues, tuple):  # an explicit spectrum fixes the dimension
        if "dim" not in table:
            m = dataclasses.replace(m, dim=len(m.eigenvalues))
        elif m.dim != len(m.eigenvalues):
            raise bad(f"{path}.dim", m.dim, f"must equal the number of eigenvalues ({len(m.eigenvalues)}); drop dim or make them agree")
    if m.width % m.heads:
        raise bad(f"{path}.width", m.width, f"must be a multiple of heads ({m.heads}); each attention head gets width / heads dimensions")
    return m


def _check_scenario(s: Scenario) -> None:
    for label, items in (("workers", s.workers), ("racks", s.racks), ("devices", s.devices)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                raise bad(f"{label}[{i}].name", item.name, f"duplicate name ({label}[{seen[item.name]}] has it too); give each [[{label}]] entry its own name")
            seen[item.name] = i
    racks = [r.name for r in s.racks]
    for i, group in enumerate(s.workers):
        if group.rack is not None and group.rack not in racks:
            known = f"known racks: {', '.join(racks)}{_did_you_mean(group.rack, racks)}" if racks else f"no racks are defined; add [[racks]] with name = {group.rack!r}"
            raise bad(f"workers[{i}].rack", group.rack, f"unknown rack; {known}")
    _check_devices(s)
    n, a = s.num_workers, s.algorithm
    _check_algorithm(s)
    if a.kind.startswith("k_") and a.k > n:
        raise bad("algorithm.k", a.k, f"must be <= the number of workers ({n}) for kind = {a.kind!r}; lower k or add workers")
    if a.backup > 0 and a.kind != "sync":
        raise bad("algorithm.backup", a.backup, f"backup workers apply to kind = 'sync' only (this is {a.kind!r}); set backup = 0 or kind = 'sync'")
    if a.backup >= n:
        raise bad("algorithm.backup", a.backup, f"must be < the number of workers ({n}); sync waits for workers - backup gradients")
    if s.data.name == "none" and s.model.name in MODELS_NEEDING_DATA:
        raise bad("data.name", "none", f"model {s.model.name!r} trains on data; choose one of digits, mnist1d, synthetic, text (none is for quadratic and least_squares)")


def _check_devices(s: Scenario) -> None:
    """A worker's device must be defined; its compute time is then work shared with the device's
    other workers, which slowdown windows (group or rack) do not combine with."""
    devices = [d.name for d in s.devices]
    racks = {r.name: r for r in s.racks}
    for i, group in enumerate(s.workers):
        if group.device is None:
            continue
        if group.device not in devices:
            known = (f"known devices: {', '.join(devices)}{_did_you_mean(group.device, devices)}" if devices
                     else f"no devices are defined; add [[devices]] with name = {group.device!r} and its capacity")
            raise bad(f"workers[{i}].device", group.device, f"unknown device; {known}")
        if group.slowdowns:
            raise bad(f"workers[{i}].slowdowns", [dataclasses.asdict(w) for w in group.slowdowns],
                      f"a worker on a device (device = {group.device!r}) computes at its share of the device, which "
                      "slowdown windows do not model; drop the slowdowns or the device")
        if group.rack in racks and racks[group.rack].slowdowns:
            raise bad(f"workers[{i}].rack", group.rack, f"rack {group.rack!r} has slowdowns, which a worker on a device "
                      f"(device = {group.device!r}) does not model; drop the rack's slowdowns, the rack or the device")


def _check_algorithm(s: Scenario) -> None:
    """Keys that belong to one algorithm are refused with another, naming the one they need."""
    a, user = s.algorithm, is_object_path(s.algorithm.kind)
    if a.stops and a.kind != "ringmaster":
        raise bad("algorithm.stops", True, f"calculation stops belong to kind = 'ringmaster' (this is {a.kind!r}); set stops = false or kind = 'ringmaster'")
    if a.options and not user:
        raise bad("algorithm.options", dict(a.options), f"options go to a user algorithm ('pkg.module:ClassName'); kind = {a.kind!r} is "
                  "built in and takes its own keys (see the scenario reference)")
    o = s.optimizer
    if o.staleness_rule == "koloskova" and o.smoothness is None:
        raise ScenarioError("optimizer.smoothness", "missing: staleness_rule = 'koloskova' needs L, the objective's smoothness "
                            "(eta_t = min(eta, 1/(4 L tau)) for tau > workers); set optimizer.smoothness")


# ---------------------------------------------------------------------------------- the tree

SLOWDOWN: dict[str, Parser] = {
    "start": number(0, why="seconds of simulated time"),
    "end": number(0, inf=True, why="seconds of simulated time; inf: until the end"),
    "factor": number(0, open_low=True, why="compute-time multiplier; below 1 is a speed-up"),
}
describe(_slowdowns, list_of(section(Slowdown, SLOWDOWN, "a slowdown"), what="{ start, end, factor } tables").json_schema)  # type: ignore[attr-defined]
FAILURES: dict[str, Parser] = {
    "at": list_of(number(0, why="crash times in seconds"), what="crash times in seconds"),
    "mtbf": number(0, open_low=True, why="mean seconds between failures"),
    "restart_after": number(0, why="seconds down"),
    "mttr": number(0, open_low=True, why="mean seconds to repair"),
}
PIPELINE: dict[str, Parser] = {
    "stages": integer(1),
    "microbatches": integer(1),
    "activation_bytes": number(0, why="bytes per micro-batch per stage boundary"),
    "stage_weights": list_of(number(0, open_low=True, why="relative stage cost"), what="positive stage weights"),
}
WORKER: dict[str, Parser] = {
    "name": text,
    "count": integer(1, why="workers in this group"),
    "compute": worker_dist,
    "stagger": number(0, why="seconds between the starts of the group's workers"),
    "slowdowns": _slowdowns,
    "failures": section(Failures, FAILURES, "failures", _check_failures),
    "rack": text,
    "pipeline": section(Pipeline, PIPELINE, "a pipeline", _check_pipeline),
    "device": text,
}
RACK: dict[str, Parser] = {"name": text, "slowdowns": _slowdowns}
DEVICE: dict[str, Parser] = {
    "name": text,
    "capacity": number(0, open_low=True, why="computations at full speed at once, e.g. cores or concurrent kernels"),
}
RUN: dict[str, Parser] = {
    "seed": integer(0),
    "until_updates": integer(1, why="server updates"),
    "until_time": number(0, open_low=True, why="seconds of simulated time"),
    "eval_every": integer(1, why="updates between evaluations"),
    "target_accuracy": number(0, 1, open_low=True, why="a fraction of test examples"),
    "max_loss": number(0, open_low=True, inf=True, why="a larger train loss ends the run as diverged"),
    "window": integer(1, why="updates per numerics window"),
    "batch_cap": integer(1, why="gradients per vmapped call"),
}
NETWORK: dict[str, Parser] = {
    "latency": dist,
    "bandwidth": number(0, open_low=True, inf=True, why="bytes/s; inf: no transfer time"),
    "server_bandwidth": number(0, open_low=True, inf=True, why="bytes/s; inf: no transfer time"),
    "compression": number(0, open_low=True, why="message size multiplier, 0.25 for 4x compression"),
}
SERVER: dict[str, Parser] = {
    "shards": integer(1),
    "lock": choice(LOCKS, "lock"),
    "apply_time": dist,
    "lock_handoff": dist,
    "lock_fifo": number(0, 1, why="chance that a released lock goes to its longest waiter (1: FIFO)"),
    "atomic": boolean,
    "lock_order": choice(LOCK_ORDERS, "lock order"),
    "checkpoint_every": integer(1, why="updates between server checkpoints (real backends)"),
}
ALGORITHM: dict[str, Parser] = {
    "kind": builtin_or_path(ALGORITHMS, "algorithm", "pkg.module:ClassName"),
    "k": integer(1),
    "backup": integer(0),
    "staleness_bound": integer(0),
    "drop_staleness_above": integer(0),
    "local_steps": integer(1),
    "local_learning_rate": number(0, open_low=True, why="step size of the local steps"),
    "elastic_alpha": number(0, 1, open_low=True, open_high=True, why="EASGD moving rate"),
    "delay_threshold": integer(1, why="Ringmaster's R: gradients of delay >= R are not applied"),
    "stops": boolean,
    "mixing": number(0, 1, open_low=True, why="FedAsync's alpha, the weight of a worker's model"),
    "mixing_decay": choice(MIXING_DECAYS, "staleness function"),
    "mixing_a": number(0, why="the polynomial's exponent or the hinge's slope"),
    "mixing_b": integer(0, why="the hinge's knee, in updates of staleness"),
    "options": toml_table,
}
MODEL: dict[str, Parser] = {
    "name": model_name,
    "param_bytes": number(0, open_low=True, why="bytes of parameters"),
    "hidden": list_of(integer(1), what="layer widths (integers >= 1)"),
    "dim": integer(1),
    "eigenvalues": eigenvalues,
    "noise": number(0, why="std of gradient noise"),
    "noise_mode": choice(NOISE_MODES, "noise mode"),
    "smoothness": number(0, open_low=True, why="L, the smoothness constant"),
    "channels": list_of(integer(1), nonempty=True, what="channel counts (integers >= 1)"),
    "layers": integer(1),
    "width": integer(1),
    "heads": integer(1),
    "context": integer(1),
    "options": toml_table,
}
DATA: dict[str, Parser] = {
    "name": choice(DATA_SETS, "data set"),
    "batch_size": integer(1),
    "partition": choice(PARTITIONS, "partition"),
    "alpha": number(0, open_low=True, why="Dirichlet concentration"),
    "classes_per_worker": integer(1, why="partition = 'classes': the classes each worker holds"),
    "test_fraction": number(0, 1, open_low=True, open_high=True),
    "samples": integer(10),
    "difficulty": number(0, open_low=True),
    "factory": factory,
}
OPTIMIZER: dict[str, Parser] = {
    "name": text,
    "learning_rate": number(0, open_low=True, why="step size"),
    "smoothness": number(0, open_low=True, why="L, for the koloskova staleness rule"),
    "schedule": text,
    "schedule_options": toml_table,
    "options": toml_table,
    "staleness_rule": builtin_or_path(STALENESS_RULES, "staleness rule", "pkg.module:function"),
    "staleness_power": number(0, open_low=True),
    "dc_lambda": number(0),
    "dc_adaptive": boolean,
}
SCENARIO: dict[str, Parser] = {
    "name": text,
    "run": section(RunConfig, RUN, "[run]", _check_run),
    "workers": array(section(WorkerGroup, WORKER, "a worker group", _check_group), "workers", nonempty=True),
    "racks": array(section(Rack, RACK, "a rack"), "racks"),
    "devices": array(section(Device, DEVICE, "a device"), "devices"),
    "network": section(NetworkConfig, NETWORK, "[network]"),
    "server": section(ServerConfig, SERVER, "[server]"),
    "algorithm": section(AlgorithmConfig, ALGORITHM, "[algorithm]"),
    "model": section(ModelConfig, MODEL, "[model]", _check_model),
    "data": section(DataConfig, DATA, "[data]"),
    "optimizer": section(OptimizerConfig, OPTIMIZER, "[optimizer]"),
}


def build_scenario(tree: dict[str, Any], base_dir: Path | None, name: str) -> Scenario:
    """Validate a whole raw tree; ``name`` is used unless the tree sets its own."""
    scenario = build(Scenario, tree, "", SCENARIO, base_dir, "a scenario")
    if "name" not in tree:
        scenario = dataclasses.replace(scenario, name=name)
    _check_scenario(scenario)
    check_optimizer(scenario.optimizer)  # (imports optax only for a non-default optimizer)
    return scenario
