"""Time distributions for compute, latency and apply times.

A scenario writes a distribution as a bare number (constant) or a table
``{ dist = "lognormal", mean = 0.05, cv = 0.2 }``. Each distribution validates its parameters
when parsed, knows its mean, and samples from a generator that is passed in (never global
randomness, docs/STYLE.md 3). Lognormal and gamma are parameterised by mean and coefficient of
variation because that is how cluster measurements are reported (mean step time, spread).

In a worker group's ``compute``, a parameter may be a formula of the worker's index in its group
(`scenario.expressions`): ``{ dist = "half_normal", shift = "1 + sqrt(i)", scale = "sqrt(i + 1)" }``
gives each of the group's workers its own distribution (`PerWorker`), checked for every worker.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ScenarioError, closest
from .expressions import parse_formula

__all__ = [
    "distribution_json_schema",
    "Distribution",
    "Constant",
    "Exponential",
    "ShiftedExponential",
    "LogNormal",
    "Gamma",
    "Uniform",
    "Pareto",
    "Empirical",
    "HalfNormal",
    "PerWorker",
    "parse_distribution",
    "bind_to_group",
    "DISTRIBUTIONS",
]


class Distribution:
    """Base class: a non-negative random duration in seconds."""

    name: ClassVar[str] = ""

    @property
    def mean(self) -> float:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws as a float64 array."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The table form used in a resolved scenario file."""
        out: dict[str, Any] = {"dist": self.name}
        for key, value in self.__dict__.items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def is_constant(self) -> bool:
        return False

    def for_worker(self, index: int) -> Distribution:
        """The distribution of the group's worker ``index`` (the same for all but `PerWorker`)."""
        return self


@dataclass(frozen=True)
class Constant(Distribution):
    name: ClassVar[str] = "constant"
    value: float = 0.0

    @property
    def mean(self) -> float:
        return self.value

    @property
    def is_constant(self) -> bool:
        return True

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, self.value)


@dataclass(frozen=True)
class Exponential(Distribution):
    name: ClassVar[str] = "exponential"
    mean_: float = field(default=1.0, metadata={"key": "mean"})

    @property
    def mean(self) -> float:
        return self.mean_

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.exponential(self.mean_, size)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.name, "mean": self.mean_}


@dataclass(frozen=True)
class ShiftedExponential(Distribution):
    """``shift + Exp(mean)``: a fixed minimum plus a random tail (Dutta et al. 2018)."""

    name: ClassVar[str] = "shifted_exponential"
    shift: float = 1.0
    mean_: float = field(default=1.0, metadata={"key": "mean"})

    @property
    def mean(self) -> float:
        return self.shift + self.mean_

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.shift + rng.exponential(self.mean_, size)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.name, "shift": self.shift, "mean": self.mean_}


@dataclass(frozen=True)
class LogNormal(Distribution):
    """Lognormal with the given mean and coefficient of variation (std / mean)."""

    name: ClassVar[str] = "lognormal"
    mean_: float = field(default=1.0, metadata={"key": "mean"})
    cv: float = 0.1

    @property
    def mean(self) -> float:
        return self.mean_

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.cv == 0.0:
            return np.full(size, self.mean_)
        sigma2 = math.log1p(self.cv**2)  # Var[X]/E[X]^2 = exp(sigma^2) - 1
        return rng.lognormal(math.log(self.mean_) - sigma2 / 2, math.sqrt(sigma2), size)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.name, "mean": self.mean_, "cv": self.cv}


@dataclass(frozen=True)
class Gamma(Distribution):
    """Gamma with the given mean and cv: shape 1/cv^2, scale mean*cv^2."""

    name: ClassVar[str] = "gamma"
    mean_: float = field(default=1.0, metadata={"key": "mean"})
    cv: float = 0.5

    @property
    def mean(self) -> float:
        return self.mean_

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.cv**2 == 0.0:  # (a cv below ~1e-154 squares to 0: no spread a float can hold)
            return np.full(size, self.mean_)
        return rng.gamma(1.0 / self.cv**2, self.mean_ * self.cv**2, size)

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.name, "mean": self.mean_, "cv": self.cv}


@dataclass(frozen=True)
class Uniform(Distribution):
    name: ClassVar[str] = "uniform"
    low: float = 0.0
    high: float = 1.0

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size)


@dataclass(frozen=True)
class Pareto(Distribution):
    """Classical Pareto: P(X > x) = (scale / x)^alpha for x >= scale. Heavy-tailed stragglers."""

    name: ClassVar[str] = "pareto"
    scale: float = 1.0
    alpha: float = 3.0

    @property
    def mean(self) -> float:
        return self.alpha * self.scale / (self.alpha - 1)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        # numpy's pareto is the Lomax (Pareto II) variate; shift and scale it to the classical one.
        return self.scale * (1.0 + rng.pareto(self.alpha, size))


@dataclass(frozen=True)
class Empirical(Distribution):
    """Resamples measured durations uniformly (a bootstrap of a real trace)."""

    name: ClassVar[str] = "empirical"
    values: tuple[float, ...] = (1.0,)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.asarray(self.values)[rng.integers(0, len(self.values), size)]


@dataclass(frozen=True)
class HalfNormal(Distribution):
    """``shift + scale * |N(0, 1)|``: a minimum plus a half-normal tail (FLSim's client durations;
    the papers' 1 + sqrt(j) + |N(0, j + 1)| is shift = "1 + sqrt(i)", scale = "sqrt(i + 1)")."""

    name: ClassVar[str] = "half_normal"
    shift: float = 0.0
    scale: float = 1.0

    @property
    def mean(self) -> float:
        return self.shift + self.scale * math.sqrt(2.0 / math.pi)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.shift + self.scale * np.abs(rng.standard_normal(size))


@dataclass(frozen=True)
class PerWorker(Distribution):
    """One distribution per worker of a group, its parameters formulas of the worker's index.

    ``params`` keeps what the scenario wrote (numbers and formula strings, for the resolved file);
    ``members`` holds worker i's distribution at index i.
    """

    kind: str = "constant"
    params: tuple[tuple[str, float | str], ...] = ()
    members: tuple[Distribution, ...] = field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    @property
    def mean(self) -> float:
        """The mean over the group's workers (each worker's own mean is ``for_worker(i).mean``)."""
        return float(np.mean([member.mean for member in self.members]))

    def for_worker(self, index: int) -> Distribution:
        return self.members[index]

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        raise TypeError("a per-worker distribution is sampled through for_worker(i)")

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, **dict(self.params)}


DISTRIBUTIONS: dict[str, type[Distribution]] = {
    cls.name: cls
    for cls in (Constant, Exponential, ShiftedExponential, LogNormal, Gamma, Uniform, Pareto, Empirical, HalfNormal)
}

# For each distribution: its keys, which are required, and the rule each must satisfy.
_PARAMS: dict[str, dict[str, str]] = {
    "constant": {"value": ">=0"},
    "exponential": {"mean": ">0"},
    "shifted_exponential": {"shift": ">=0", "mean": ">0"},
    "lognormal": {"mean": ">0", "cv": ">=0"},
    "gamma": {"mean": ">0", "cv": ">=0"},
    "uniform": {"low": ">=0", "high": ">=0"},
    "pareto": {"scale": ">0", "alpha": ">1"},
    "half_normal": {"shift": ">=0", "scale": ">=0"},
    "empirical": {},
}


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(path, f"= {value!r}: must be a number (seconds)")
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        raise ScenarioError(path, f"= {value!r}: must be a finite number (seconds)") from None
    if math.isnan(value):
        raise ScenarioError(path, "= nan: must be a number, not NaN")
    return value


_RULE_TEXT = {">=0": "must be >= 0", ">0": "must be > 0", ">1": "must be > 1"}
_RULE_SCHEMA = {">=0": {"minimum": 0}, ">0": {"exclusiveMinimum": 0}, ">1": {"exclusiveMinimum": 1}}


def distribution_json_schema(*, formulas: bool) -> dict[str, Any]:
    """The JSON Schema of what `parse_distribution` accepts (from `_PARAMS`): a bare number >= 0 or
    one ``{ dist = ..., ... }`` table per kind; ``formulas``: a parameter may be a formula string of
    the worker index (a worker group's compute)."""
    def parameter(rule: str) -> dict[str, Any]:
        value = {"type": "number", **_RULE_SCHEMA[rule]}
        return {"anyOf": [value, {"type": "string", "description": "a formula of i and n"}]} if formulas else value

    tables = [{"type": "object", "properties": {"dist": {"const": kind}, **{key: parameter(rule) for key, rule in params.items()}},
               "required": ["dist", *params], "additionalProperties": False}
              for kind, params in _PARAMS.items() if kind != "empirical"]
    seconds = {"type": "number", "minimum": 0}
    tables.append({"type": "object", "properties": {"dist": {"const": "empirical"}, "values": {"type": "array", "items": seconds, "minItems": 1},
                                                    "file": {"type": "string"}},
                   "required": ["dist"], "oneOf": [{"required": ["values"]}, {"required": ["file"]}], "additionalProperties": False})
    return {"anyOf": [{**seconds, "description": "a constant, in seconds"}, *tables],
            "description": f"seconds: a number or {{ dist = ... }} with dist one of {', '.join(_PARAMS)}"}
_WHY = {"cv": "coefficient of variation", "alpha": "tail index; alpha <= 1 has an infinite mean"}


def _check_rule(value: float, rule: str, path: str, worker: str = "") -> None:
    bound = float(rule.lstrip("<>="))
    ok = value >= bound if rule.startswith(">=") else value > bound
    if not ok or not math.isfinite(value):
        why = _WHY.get(path.rsplit(".", 1)[-1], "a duration in seconds")
        raise ScenarioError(path, f"= {value!r}{worker}: {_RULE_TEXT[rule]} and finite ({why})")


def _read_times_file(file: str, path: str, base_dir: Path | None) -> tuple[float, ...]:
    target = Path(file)
    if not target.is_absolute() and base_dir is not None:
        target = base_dir / target
    if not target.is_file():
        raise ScenarioError(path, f"= {file!r}: file not found (looked at {target}); give a CSV of durations in seconds")
    values: list[float] = []
    try:
        with target.open(newline="", encoding="utf-8") as handle:
            for row_number, row in enumerate(csv.reader(handle), start=1):
                if not row or not row[0].strip():
                    continue
                try:
                    values.append(float(row[0]))
                except ValueError:
                    if row_number == 1:  # a header line
                        continue
                    raise ScenarioError(path, f"{target}:{row_number}: {row[0]!r} is not a number; the first column must hold durations in seconds") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ScenarioError(path, f"= {file!r}: cannot read {target} ({err}); give a UTF-8 CSV of durations in seconds") from None
    return tuple(values)


def parse_distribution(spec: Any, path: str, base_dir: Path | None = None) -> Distribution:
    """Parse a bare number or a ``{dist = ..., ...}`` table into a validated Distribution.

    ``path`` is the key path used in error messages (``workers[0].compute``); ``base_dir`` is the
    scenario file's folder, against which an empirical ``file`` is resolved.
    """
    if isinstance(spec, Distribution):
        return spec
    if not isinstance(spec, dict):
        return Constant(_check_nonneg(_number(spec, path), path))
    if "dist" not in spec:
        raise ScenarioError(path, f"= {spec!r}: a distribution table needs 'dist', one of {', '.join(DISTRIBUTIONS)} (or write a bare number for a constant)")
    kind = spec["dist"]
    if not isinstance(kind, str) or kind not in DISTRIBUTIONS:  # (a list or table is unhashable)
        hint = closest(str(kind), DISTRIBUTIONS)
        raise ScenarioError(f"{path}.dist", f"= {kind!r}: unknown distribution; choose one of {', '.join(DISTRIBUTIONS)}" + (f" (did you mean {hint!r}?)" if hint else ""))
    allowed = set(_PARAMS[kind]) | ({"values", "file"} if kind == "empirical" else set())
    for key in spec:
        if key != "dist" and key not in allowed:
            hint = closest(key, allowed)
            raise ScenarioError(f"{path}.{key}", f"unknown parameter for dist = {kind!r}; it takes {', '.join(sorted(allowed))}" + (f" (did you mean {hint!r}?)" if hint else ""))
    if kind == "empirical":
        return _parse_empirical(spec, path, base_dir)
    for key in _PARAMS[kind]:
        if key not in spec:
            raise ScenarioError(f"{path}.{key}", f"missing: dist = {kind!r} needs {', '.join(_PARAMS[kind])}")
    if any(isinstance(spec[key], str) for key in _PARAMS[kind]):  # formulas of the worker index
        formulas = {key: parse_formula(spec[key], f"{path}.{key}") for key in _PARAMS[kind] if isinstance(spec[key], str)}
        numbers = {key: _number(spec[key], f"{path}.{key}") for key in _PARAMS[kind] if key not in formulas}
        return _Unbound(kind, tuple((key, formulas[key].text if key in formulas else numbers[key]) for key in _PARAMS[kind]), path)
    return _build(kind, {key: _number(spec[key], f"{path}.{key}") for key in _PARAMS[kind]}, path)


def _build(kind: str, values: dict[str, float], path: str, formulas: dict[str, str] | None = None, index: int = 0) -> Distribution:
    """The distribution ``kind`` with these parameter values, each checked against its rule
    (``formulas``: the formula behind a value, evaluated for the group's worker ``index``)."""
    formulas = formulas or {}
    worker = f" for the worker at i = {index}" if formulas else ""
    for key, rule in _PARAMS[kind].items():
        _check_rule(values[key], rule, f"{path}.{key}", f" (from {formulas[key]!r}){worker}" if key in formulas else "")
    if kind == "uniform" and values["high"] < values["low"]:
        raise ScenarioError(f"{path}.high", f"= {values['high']!r}: must be >= low ({values['low']!r}){worker}; swap them")
    if kind == "constant":
        return Constant(values["value"])
    cls = DISTRIBUTIONS[kind]
    kwargs = {("mean_" if k == "mean" else k): v for k, v in values.items()}
    return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Unbound(Distribution):
    """Formulas parsed but not yet evaluated: the group's count binds them (`bind_to_group`)."""

    kind: str = ""
    params: tuple[tuple[str, float | str], ...] = ()
    path: str = ""

    @property
    def mean(self) -> float:
        raise TypeError("formulas of the worker index have a mean once bound to a group's count")


def bind_to_group(dist: Distribution, count: int) -> Distribution:
    """Evaluate the formulas of ``dist`` for a group of ``count`` workers; other distributions pass."""
    if not isinstance(dist, _Unbound):
        return dist
    columns = {key: parse_formula(value, f"{dist.path}.{key}").values(count) if isinstance(value, str) else np.full(count, value)
               for key, value in dist.params}
    formulas = {key: value for key, value in dist.params if isinstance(value, str)}
    members = tuple(_build(dist.kind, {key: float(column[i]) for key, column in columns.items()}, dist.path, formulas, i)
                    for i in range(count))
    return PerWorker(dist.kind, dist.params, members)


def reject_formulas(dist: Distribution, path: str) -> Distribution:
    """Formulas of the worker index belong to a worker group's compute only."""
    if isinstance(dist, _Unbound):
        raise ScenarioError(path, f"uses a formula of the worker index ({dict(dist.params)}); formulas work in "
                            "workers[].compute only, where i is the worker's index in its group")
    return dist


def _check_nonneg(value: float, path: str) -> float:
    if not value >= 0 or math.isinf(value):  # (`not >=` also rejects a NaN read from a CSV file)
        raise ScenarioError(path, f"= {value!r}: must be >= 0 and finite (a duration in seconds)")
    return value


def _parse_empirical(spec: dict[str, Any], path: str, base_dir: Path | None) -> Empirical:
    if ("values" in spec) == ("file" in spec):
        raise ScenarioError(path, "an empirical distribution needs exactly one of 'values' (a list of seconds) or 'file' (a CSV path)")
    if "file" in spec:
        if not isinstance(spec["file"], str):
            raise ScenarioError(f"{path}.file", f"= {spec['file']!r}: must be a path string")
        values = _read_times_file(spec["file"], f"{path}.file", base_dir)
        key = f"{path}.file"
    else:
        raw = spec["values"]
        key = f"{path}.values"
        if not isinstance(raw, (list, tuple)):
            raise ScenarioError(key, f"= {raw!r}: must be a list of durations in seconds")
        values = tuple(_number(v, f"{key}[{i}]") for i, v in enumerate(raw))
    if not values:
        raise ScenarioError(key, "holds no durations; give at least one")
    for i, v in enumerate(values):
        _check_nonneg(v, f"{key}[{i}]")
    return Empirical(tuple(values))
