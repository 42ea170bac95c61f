"""Data sets and partitions: the vendored digits file, MNIST-1D (generated offline) and the
"classes" partition (each worker holds exactly c classes)."""

from __future__ import annotations

import hashlib
import random
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgd_sim.errors import ScenarioError
from asgd_sim.numerics.data import data_rng, digits_arrays, load_dataset, partition_indices
from asgd_sim.scenario.config import DataConfig, ModelConfig, Scenario

# sha256 of the arrays scikit-learn 1.9.1 gives, computed with scikit-learn itself (not with this
# package's loader) before the file was vendored:
#   d = sklearn.datasets.load_digits(); x = (d.data / 16.0).astype(np.float32); y = d.target.astype(np.int32)
DIGITS_X_SHA256 = "9f578524b6cec1fc800cc52dfc87ebe56264983d490aa72a4bd928ba2570ec77"
DIGITS_Y_SHA256 = "3a0e68456f9a3c609b399717dd9ca55bb9153be1bccf72e38e3319cb740c75cd"


def test_vendored_digits_are_the_arrays_scikit_learn_gave():
    x, y = digits_arrays()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int32
    assert hashlib.sha256(x.tobytes()).hexdigest() == DIGITS_X_SHA256
    assert hashlib.sha256(y.tobytes()).hexdigest() == DIGITS_Y_SHA256
    # the file's first line, read by eye: 0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,... label 0
    np.testing.assert_array_equal(x[0, :16] * 16, [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0])
    assert y[0] == 0
    # the UCI test set's class counts (its documentation)
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_scikit_learn_is_not_needed_to_load_digits(monkeypatch):
    import sys

    digits_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing it now raises ImportError
    try:
        x, _ = digits_arrays()
    finally:
        digits_arrays.cache_clear()
    assert hashlib.sha256(x.tobytes()).hexdigest() == DIGITS_X_SHA256


# --- MNIST-1D ----------------------------------------------------------------------------------

pytest.importorskip("mnist1d")  # the test extra installs it


@pytest.fixture(scope="module")
def mnist1d_offline():
    """Generate MNIST-1D with every network connection refused, and report whether the global
    random states moved."""
    from asgd_sim.numerics.data import mnist1d_arrays

    mnist1d_arrays.cache_clear()
    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    np.random.seed(123)
    random.seed(123)
    before = (np.random.get_state()[1].copy(), random.getstate())
    try:
        arrays = mnist1d_arrays()
    finally:
        mp.undo()
    moved = not (np.array_equal(before[0], np.random.get_state()[1]) and before[1] == random.getstate())
    return arrays, attempts, moved


def test_mnist1d_is_generated_offline_and_leaves_the_global_random_state_alone(mnist1d_offline):
    (x, y), attempts, moved = mnist1d_offline
    assert attempts == [] and not moved
    assert x.shape == (5000, 40) and x.dtype == np.float32 and y.dtype == np.int32
    assert set(np.unique(y)) == set(range(10)) and 480 <= np.bincount(y).min() and np.bincount(y).max() <= 520
    # the generator standardises the whole set (Greydanus 2020): mean 0, std 1
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1.0) < 1e-4


def test_mnist1d_is_split_partitioned_and_batched_like_digits(mnist1d_offline):
    data = DataConfig(name="mnist1d", partition="classes", classes_per_worker=3, batch_size=16)
    dataset = load_dataset(data, seed=0)
    assert len(dataset.test_y) == 1250 and len(dataset.train_y) == 3750  # test_fraction 0.25, like digits
    again = load_dataset(data, seed=0)
    np.testing.assert_array_equal(dataset.train_x, again.train_x)
    assert not np.array_equal(load_dataset(data, seed=1).train_y, dataset.train_y)  # the split follows the seed

    parts = partition_indices(dataset.train_y, 4, "classes", 0.5, data_rng(0, "partition"), classes_per_worker=3)
    assert [len(np.unique(dataset.train_y[p])) for p in parts] == [3, 3, 3, 3]


@pytest.mark.slow
def test_an_mlp_learns_mnist1d_under_async_sgd(mnist1d_offline):
    from asgd_sim.runner import simulate

    data = DataConfig(name="mnist1d", batch_size=32, partition="classes", classes_per_worker=5)
    result = simulate(Scenario(model=ModelConfig(name="mlp", hidden=(64,)), data=data),
                      ["run.until_updates=600", "run.eval_every=300", "workers=4", "optimizer.learning_rate=0.1"])
    accuracy = result.metrics["test_accuracy"]
    assert accuracy[0] < 0.2 and accuracy[-1] > 0.35  # chance is 0.1
    # every gradient's batch came from its worker's 5 classes
    dataset = load_dataset(data, seed=0)
    parts = partition_indices(dataset.train_y, 4, "classes", 0.5, data_rng(0, "partition"), classes_per_worker=5)
    from asgd_sim.numerics.problems import build_problem
    import jax.numpy as jnp

    problem = build_problem(result.scenario, num_workers=4)
    for worker in range(4):
        batch = problem.make_batch(jnp.int32(worker), jnp.int32(7))
        assert batch["x"].shape == (32, 40)
        assert set(np.asarray(batch["y"]).tolist()) <= set(dataset.train_y[parts[worker]].tolist())


# --- the "classes" partition -------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(classes=st.integers(1, 8), workers=st.integers(1, 9), per=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_classes_partition_gives_each_worker_exactly_c_classes(classes, workers, per, seed):
    per = min(per, classes)
    if workers * per < classes:
        per = -(-classes // workers)
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), 40))
    parts = partition_indices(labels, workers, "classes", 0.5, np.random.default_rng(seed), classes_per_worker=per)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))  # disjoint and covering
    for part in parts:
        assert len(np.unique(labels[part])) == per
    # a class is split evenly among the workers holding it
    for label in range(classes):
        sizes = [int(np.sum(labels[p] == label)) for p in parts if np.any(labels[p] == label)]
        assert max(sizes) - min(sizes) <= 1


def test_classes_partition_follows_the_seed():
    labels = np.repeat(np.arange(10), 30)
    a = partition_indices(labels, 5, "classes", 0.5, np.random.default_rng(0), classes_per_worker=2)
    b = partition_indices(labels, 5, "classes", 0.5, np.random.default_rng(0), classes_per_worker=2)
    c = partition_indices(labels, 5, "classes", 0.5, np.random.default_rng(1), classes_per_worker=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("labels,workers,per,message", [
    (np.repeat(np.arange(10), 30), 4, 11, "only 10 classes; choose 1..10"),
    (np.repeat(np.arange(10), 30), 4, 2, "4 workers x 2 classes hold only 8 of the 10 classes"),
    (np.repeat(np.arange(10), 3), 20, 2, "class .* has 3 training examples for the 4 workers"),
])
def test_classes_partition_errors_name_the_key_and_the_fix(labels, workers, per, message):
    with pytest.raises(ScenarioError, match=message) as error:
        partition_indices(labels, workers, "classes", 0.5, np.random.default_rng(0), classes_per_worker=per)
    assert str(error.value).startswith("data.classes_per_worker")


def test_cli_refuses_a_bad_classes_partition(tmp_path, capsys):
    from asgd_sim.cli import main

    code = main(["run", "scenarios/quickstart.toml", "--out", str(tmp_path / "r"), "--quiet", "--set", "data.partition=classes",
                 "--set", "data.classes_per_worker=12"])
    assert code == 2
    assert "data.classes_per_worker = 12: the training set has only 10 classes" in capsys.readouterr().err
    code = main(["run", "scenarios/quickstart.toml", "--quiet", "--set", "data.classes_per_worker=0"])
    assert code == 2 and "data.classes_per_worker = 0: must be an integer >= 1" in capsys.readouterr().err


def test_classes_partition_needs_labels():
    from asgd_sim.numerics.problems import build_problem

    with pytest.raises(ScenarioError, match="'classes' deals out class labels"):
        build_problem(Scenario(model=ModelConfig(name="least_squares"), data=DataConfig(partition="classes")), 2)


def test_mnist1d_without_its_package_is_one_line_with_the_install_command(monkeypatch):
    import sys

    from asgd_sim.numerics.data import mnist1d_arrays

    mnist1d_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    try:
        with pytest.raises(ScenarioError, match=r"data.name: 'mnist1d' is generated by the mnist1d package: pip install 'asgd-sim\[mnist1d\]'"):
            load_dataset(DataConfig(name="mnist1d"), seed=0)
    finally:
        mnist1d_arrays.cache_clear()
