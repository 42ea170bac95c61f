"""Data sets and how they are dealt out to workers.

Everything here is plain numpy and runs once per run, before any gradient: loading a data set,
the fixed train/test split, the per-worker partition (IID or Dirichlet label skew) and the fixed
evaluation subset. Each random choice draws from its own stream of the run seed (`data_rng`), so
the split does not change when the partition scheme or the number of workers does, and no choice
here shares a stream with the timing engine. Raw arrays that cost something to build are cached
per process (`functools.lru_cache`) and returned read-only.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..scenario.config import DataConfig
from ..errors import ScenarioError
from ..scenario.plugins import load_object
from ..errors import closest

__all__ = [
    "Dataset",
    "PARTITIONS",
    "data_rng",
    "digits_arrays",
    "synthetic_arrays",
    "text_corpus",
    "split_train_test",
    "load_dataset",
    "partition_indices",
    "eval_subset",
]

PARTITIONS = ("iid", "dirichlet")
SYNTHETIC_FEATURES = 20
SYNTHETIC_CLASSES = 10
SYNTHETIC_RADIUS = 3.0  # class means lie on a sphere of this radius; `difficulty` is the noise std
CORPUS_MODULES = ("textwrap", "difflib", "json", "json.decoder", "json.encoder", "string", "heapq", "fractions")
CORPUS_MAX_BYTES = 200_000
EVAL_EXAMPLES = 1000  # the fixed training subset that `train_loss` is measured on

# Independent streams of the run seed, one per purpose. Two-element spawn keys cannot collide with
# the children that `SeedSequence(seed).spawn(n)` hands to the timing engine.
_STREAMS = {"split": 0, "partition": 1, "eval": 2, "synthetic": 3, "least_squares": 4}


def data_rng(seed: int, purpose: str) -> np.random.Generator:
    """The generator for one data purpose ("split", "partition", "eval", ...) of a run seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xDA7A, _STREAMS[purpose])))


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for array in arrays:
        array.flags.writeable = False
    return arrays


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download): x float32 [1797, 64] in [0, 1], y int32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return _read_only(x, digits.target.astype(np.int32))  # type: ignore[return-value]


@lru_cache(maxsize=8)
def synthetic_arrays(samples: int, difficulty: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian-mixture classification set: 10 classes in 20 features.

    Class means are random directions scaled to radius 3; each example is its class mean plus
    N(0, difficulty^2) noise per feature, so `difficulty` sets the class overlap (1.0: roughly
    10 % Bayes error; 0.3: separable; 3.0: mostly noise).
    """
    rng = data_rng(seed, "synthetic")
    means = rng.normal(size=(SYNTHETIC_CLASSES, SYNTHETIC_FEATURES))
    means *= SYNTHETIC_RADIUS / np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, SYNTHETIC_CLASSES, size=samples)
    x = means[y] + difficulty * rng.normal(size=(samples, SYNTHETIC_FEATURES))
    return _read_only(x.astype(np.float32), y.astype(np.int32))  # type: ignore[return-value]


@lru_cache(maxsize=1)
def text_corpus() -> np.ndarray:
    """Characters of some standard-library source files, as uint8 codes in 0..127.

    The corpus ships with Python itself, so it needs no download; it changes (slightly) between
    Python versions. Non-ASCII bytes become '?'. Capped at 200 KB.
    """
    chunks = []
    for name in CORPUS_MODULES:
        path = inspect.getsourcefile(importlib.import_module(name))
        if path is None:
            raise ScenarioError("data.name", f"text: the source of module {name!r} is not installed")
        with open(path, "rb") as handle:
            chunks.append(handle.read())
    codes = np.frombuffer(b"\n".join(chunks)[:CORPUS_MAX_BYTES], dtype=np.uint8).copy()
    codes[codes >= 128] = ord("?")
    return _read_only(codes)[0]


def split_train_test(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random split of range(n): (train indices, test indices), each sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ScenarioError("data.test_fraction", f"= {test_fraction}: must be in (0, 1)")
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    order = rng.permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


@dataclass(frozen=True)
class Dataset:
    """A supervised data set split into train and test (numpy arrays, rows are examples)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def labels(self) -> np.ndarray | None:
        """Class labels of the training set, or None when y is not a 1-D integer array."""
        y = self.train_y
        return y if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) else None


def load_dataset(data: DataConfig, seed: int) -> Dataset:
    """The data set `data` names (digits | synthetic | a user factory), split by the run seed."""
    if data.factory is not None:
        return _user_dataset(data.factory, seed)
    if data.name == "digits":
        x, y = digits_arrays()
    elif data.name == "synthetic":
        if data.samples < 2:
            raise ScenarioError("data.samples", f"= {data.samples}: must be >= 2")
        x, y = synthetic_arrays(data.samples, float(data.difficulty), seed)
    else:
        hint = closest(data.name, ("digits", "synthetic"))
        raise ScenarioError(
            "data.name",
            f"{data.name!r} is not a classification data set"
            + (f": did you mean {hint!r}?" if hint else "")
            + " (digits | synthetic, or set data.factory = 'package.module:function')",
        )
    train, test = split_train_test(len(y), data.test_fraction, data_rng(seed, "split"))
    return Dataset(x[train], y[train], x[test], y[test])


def _user_dataset(spec: str, seed: int) -> Dataset:
    """Call a user data factory: ``factory()`` (or ``factory(seed=...)`` if it takes a seed)."""
    factory = load_object(spec, "data.factory")
    takes_seed = "seed" in inspect.signature(factory).parameters
    out = factory(seed=seed) if takes_seed else factory()
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ScenarioError("data.factory", f"{spec} must return (train, test), got {type(out).__name__}")
    arrays = []
    for part, split in zip(("train", "test"), out):
        if not isinstance(split, dict) or not {"x", "y"} <= split.keys():
            raise ScenarioError("data.factory", f"{spec}: {part} must be a dict with keys 'x' and 'y'")
        x, y = np.asarray(split["x"]), np.asarray(split["y"])
        if len(x) != len(y) or len(x) == 0:
            raise ScenarioError("data.factory", f"{spec}: {part} x and y need the same, non-zero length")
        arrays += [x, y]
    return Dataset(*arrays)


def partition_indices(
    labels: np.ndarray, num_workers: int, scheme: str, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Deal the examples (positions in `labels`) out to workers: one sorted index array each.

    "iid": a shuffled split into equal parts (sizes differ by at most one). "dirichlet": label
    skew as in Hsu, Qi & Brown 2019 (arXiv:1909.06335): for each class, the proportions that go to
    each worker are drawn from Dirichlet(alpha, ..., alpha); small alpha gives each worker few
    classes, large alpha approaches IID. Every worker gets at least one example (taken from the
    largest part when a draw leaves a worker empty). The parts are disjoint and cover everything.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n < num_workers:
        raise ScenarioError("data", f"{n} training examples cannot give each of {num_workers} workers one")
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_workers)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ScenarioError("data.alpha", f"= {alpha}: must be > 0 (Dirichlet concentration)")
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_workers, float(alpha)))
            cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
            for worker, chunk in enumerate(np.split(members, cuts)):
                chunks[worker].append(chunk)
        parts = [np.concatenate(c) for c in chunks]
        for worker in range(num_workers):
            if len(parts[worker]) == 0:
                donor = int(np.argmax([len(p) for p in parts]))
                parts[worker], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    else:
        hint = closest(scheme, PARTITIONS)
        raise ScenarioError(
            "data.partition",
            f"unknown partition {scheme!r}" + (f": did you mean {hint!r}?" if hint else "") + f" ({' | '.join(PARTITIONS)})",
        )
    return [np.sort(p).astype(np.int64) for p in parts]


def eval_subset(n: int, seed: int, size: int = EVAL_EXAMPLES) -> np.ndarray:
    """A fixed, sorted subset of range(n) (at most `size`) on which training loss is measured."""
    return np.sort(data_rng(seed, "eval").permutation(n)[: min(size, n)])
