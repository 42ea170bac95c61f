"""Problems and data: batches as pure functions of (seed, worker, k), gradients against
independent numpy computations, training sanity, partitions and user models."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgd_sim.scenario.config import DataConfig, ModelConfig, RunConfig, Scenario
from asgd_sim.numerics.data import data_rng, load_dataset, partition_indices
from asgd_sim.errors import ScenarioError
from asgd_sim.numerics.networks import _scaled_normals
from asgd_sim.numerics.problems import build_problem

REPO = Path(__file__).resolve().parents[1]


def scenario(model: str = "logreg", seed: int = 0, **data) -> Scenario:
    return Scenario(run=RunConfig(seed=seed), model=ModelConfig(name=model), data=DataConfig(**data))


def int32(*values: int) -> jax.Array:
    """A scalar (one value) or a vector of int32, as the engine passes workers and iterations."""
    return jnp.asarray(values[0] if len(values) == 1 else values, jnp.int32)


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def trees_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def logreg():
    return build_problem(scenario("logreg", batch_size=8), num_workers=3)


# --- initialisation ------------------------------------------------------------------------


def one_normal_per_array(key: jax.Array, shapes: list[tuple[int, ...]], scales: list[float]) -> list[jax.Array]:
    """The plain way: one ``jax.random.normal`` per array, each with its own split key."""
    keys = jax.random.split(key, len(shapes))
    return [scale * jax.random.normal(k, shape, jnp.float32) for k, shape, scale in zip(keys, shapes, scales)]


@pytest.mark.parametrize("shapes", [
    [(64, 256), (256, 256), (256, 10)],  # the digits MLP
    [(3, 3, 1, 8), (3, 3, 8, 16), (1024, 10)],  # the CNN
    [(5,), (7, 3), (1,)],
    [(1500, 1000), (3, 3)],  # padding to 1.5M values each would cost more: drawn separately
])
def test_scaled_normals_are_the_values_of_one_normal_per_array(shapes):
    scales = [0.5 / (i + 1) for i in range(len(shapes))]
    key = jax.random.PRNGKey(11)
    expected = jax.jit(lambda k: one_normal_per_array(k, shapes, scales))(key)
    got = jax.jit(lambda k: _scaled_normals(k, shapes, scales))(key)
    assert [g.shape for g in got] == shapes
    assert_trees_equal(got, expected)  # bitwise: the same model whichever way it is drawn


def random_draws(init, key: jax.Array) -> int:
    """How many random-bit draws (threefry kernels, each compiled on its own) ``init`` makes."""

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "random_bits"
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else [param]:
                    inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                    if hasattr(inner, "eqns"):
                        total += count(inner)
        return total

    return count(jax.make_jaxpr(init)(key).jaxpr)


def test_builtin_inits_draw_all_weights_in_one_call():
    key = jax.random.PRNGKey(5)
    mlp = build_problem(Scenario(model=ModelConfig(name="mlp", hidden=(256, 256))), num_workers=2)
    sizes = (64, 256, 256, 10)
    he_normal = jax.jit(lambda k: one_normal_per_array(k, list(zip(sizes[:-1], sizes[1:])), [math.sqrt(2.0 / a) for a in sizes[:-1]]))
    layers = mlp.init(key)  # (jitted by build_problem; values are compared under jit on both sides)
    assert_trees_equal([layer["w"] for layer in layers], he_normal(key))
    assert all(not np.asarray(layer["b"]).any() for layer in layers)
    cnn = build_problem(Scenario(model=ModelConfig(name="cnn", channels=(8, 16))), num_workers=2)
    params = cnn.init(key)
    expected = jax.jit(lambda k: one_normal_per_array(
        k, [(3, 3, 1, 8), (3, 3, 8, 16), (1024, 10)], [math.sqrt(2 / 9), math.sqrt(2 / 72), math.sqrt(1 / 1024)]))(key)
    assert_trees_equal([conv["w"] for conv in params["conv"]] + [params["out"]["w"]], expected)
    transformer = build_problem(Scenario(model=ModelConfig(name="transformer"), data=DataConfig(name="text")), num_workers=2)
    for problem in (mlp, cnn, transformer):
        assert random_draws(problem.init, key) == 1, problem.name
    assert random_draws(lambda k: one_normal_per_array(k, [(2, 2)] * 3, [1.0] * 3), key) == 3  # (the count sees each draw)


# --- batches -------------------------------------------------------------------------------


def test_make_batch_is_deterministic_and_differs_across_worker_and_k(logreg):
    batch = logreg.make_batch(int32(1), int32(5))
    assert batch["x"].shape == (8, 64) and batch["y"].shape == (8,)
    assert_trees_equal(batch, logreg.make_batch(int32(1), int32(5)))
    # Common random numbers: another problem built from the same data config sees the same batch.
    other_model = build_problem(scenario("mlp", batch_size=8), num_workers=3)
    assert_trees_equal(batch, other_model.make_batch(int32(1), int32(5)))
    assert not trees_equal(batch, logreg.make_batch(int32(1), int32(6)))
    assert not trees_equal(batch, logreg.make_batch(int32(2), int32(5)))
    reseeded = build_problem(scenario("logreg", seed=1, batch_size=8), num_workers=3)
    assert not trees_equal(batch, reseeded.make_batch(int32(1), int32(5)))


def test_vmapped_make_batch_equals_individual_calls(logreg):
    workers, ks = int32(0, 1, 2, 1, 0), int32(0, 0, 3, 7, 100)
    batched = jax.jit(jax.vmap(logreg.make_batch))(workers, ks)
    for i, (w, k) in enumerate(zip(workers, ks)):
        assert_trees_equal(jax.tree.map(lambda a: a[i], batched), logreg.make_batch(w, k))


def test_batches_come_from_the_workers_own_shard():
    data = DataConfig(partition="dirichlet", alpha=0.1, batch_size=16)
    problem = build_problem(Scenario(model=ModelConfig(name="logreg"), data=data), num_workers=4)
    dataset = load_dataset(data, seed=0)
    shards = partition_indices(dataset.train_y, 4, "dirichlet", 0.1, data_rng(0, "partition"))
    for worker in range(4):
        rows = {row.tobytes() for row in dataset.train_x[shards[worker]]}
        others = {row.tobytes() for w in range(4) if w != worker for row in dataset.train_x[shards[w]]}
        for k in range(3):
            batch = problem.make_batch(int32(worker), int32(k))
            for x, y in zip(np.asarray(batch["x"]), np.asarray(batch["y"])):
                assert x.tobytes() in rows
                assert y in set(dataset.train_y[shards[worker]].tolist())
            assert any(x.tobytes() not in others for x in np.asarray(batch["x"]))


# --- theory problems -----------------------------------------------------------------------


def test_quadratic_gradient_is_curvature_times_offset_plus_noise():
    sc = Scenario(model=ModelConfig(name="quadratic", dim=6, eigenvalues={"min": 0.5, "max": 3.0}, noise=0.3))
    problem = build_problem(sc, num_workers=2)
    a = np.linspace(0.5, 3.0, 6)
    w = np.arange(6, dtype=np.float32) - 2.0
    noises = jax.vmap(problem.make_batch)(jnp.zeros(4000, jnp.int32), jnp.arange(4000, dtype=jnp.int32))
    grads = np.asarray(jax.vmap(jax.grad(problem.loss), in_axes=(None, 0))(jnp.asarray(w), noises))
    np.testing.assert_allclose(grads, a * w + np.asarray(noises), rtol=1e-6, atol=1e-6)  # w* = 0
    assert abs(np.asarray(noises).std() - 0.3) < 0.01 and abs(np.asarray(noises).mean()) < 0.01
    np.testing.assert_array_equal(np.asarray(problem.init(jax.random.PRNGKey(3))), np.ones(6))
    np.testing.assert_array_equal(np.asarray(problem.optimum), np.zeros(6))
    metrics = problem.evaluate(jnp.asarray(w))
    assert float(metrics["train_loss"]) == pytest.approx(0.5 * np.sum(a * w * w), rel=1e-6)
    assert math.isnan(float(metrics["test_accuracy"]))
    assert problem.param_count == 6 and problem.param_bytes == 24


def test_quadratic_eigenvalue_list_and_bad_spectrum():
    problem = build_problem(Scenario(model=ModelConfig(name="quadratic", dim=2, eigenvalues=[1.0, 4.0])), 1)
    assert float(problem.evaluate(jnp.ones(2))["train_loss"]) == pytest.approx(2.5)
    with pytest.raises(ScenarioError, match=r"model\.eigenvalues.*model\.dim = 3"):
        build_problem(Scenario(model=ModelConfig(name="quadratic", dim=2, eigenvalues=[1.0, 2.0, 3.0])), 1)
    with pytest.raises(ScenarioError, match="model.eigenvalues"):
        build_problem(Scenario(model=ModelConfig(name="quadratic", dim=2, eigenvalues={"min": -1.0, "max": 1.0})), 1)


def test_least_squares_optimum_has_zero_gradient_and_excess_loss_is_exact():
    sc = Scenario(model=ModelConfig(name="least_squares", dim=5), data=DataConfig(samples=120, batch_size=120))
    problem = build_problem(sc, num_workers=1)
    # Recover all rows (with-replacement batches of 120 from 120 rows: 30 of them miss none w.h.p.).
    batches = jax.vmap(problem.make_batch)(jnp.zeros(30, jnp.int32), jnp.arange(30, dtype=jnp.int32))
    x_all = np.asarray(batches["x"], np.float64).reshape(-1, 5)
    y_all = np.asarray(batches["y"], np.float64).reshape(-1)
    x, first = np.unique(x_all, axis=0, return_index=True)
    y = y_all[first]
    assert len(y) == 120
    w_opt = np.asarray(problem.optimum, np.float64)
    np.testing.assert_allclose(x.T @ (x @ w_opt - y) / 120, 0.0, atol=1e-5)
    np.testing.assert_allclose(w_opt, np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-5)
    assert np.linalg.norm(x.T @ (x @ np.zeros(5) - y) / 120) > 0.1  # the check above can fail
    w = np.array([0.3, -1.0, 2.0, 0.0, 0.5])
    f = lambda v: 0.5 * np.mean((x @ v - y) ** 2)  # noqa: E731
    assert float(problem.evaluate(jnp.asarray(w, jnp.float32))["train_loss"]) == pytest.approx(f(w) - f(w_opt), rel=1e-4)
    assert float(problem.evaluate(problem.optimum)["train_loss"]) == pytest.approx(0.0, abs=1e-9)


# --- models train --------------------------------------------------------------------------

TRAINABLE = {
    "logreg": (ModelConfig(name="logreg"), DataConfig(batch_size=16), 0.5),
    "mlp_synthetic": (ModelConfig(name="mlp", hidden=(32,)), DataConfig(name="synthetic", samples=500, batch_size=16), 0.1),
    "cnn": (ModelConfig(name="cnn", channels=(4,)), DataConfig(batch_size=16), 0.1),
    "transformer": (ModelConfig(name="transformer", layers=1, width=32, heads=2, context=16), DataConfig(name="text", batch_size=8), 0.5),
}


@pytest.mark.parametrize("case", sorted(TRAINABLE))
def test_loss_decreases_under_plain_sgd(case):
    model, data, lr = TRAINABLE[case]
    problem = build_problem(Scenario(model=model, data=data), num_workers=2)

    @jax.jit
    def train(params):
        def step(params, k):
            grads = jax.grad(problem.loss)(params, problem.make_batch(k % 2, k))
            return jax.tree.map(lambda p, g: p - lr * g, params, grads), None

        return jax.lax.scan(step, params, jnp.arange(30, dtype=jnp.int32))[0]

    evaluate = jax.jit(problem.evaluate)
    params = problem.init(jax.random.PRNGKey(0))
    before, after = evaluate(params), evaluate(train(params))
    assert float(after["train_loss"]) < 0.8 * float(before["train_loss"])
    assert float(after["test_accuracy"]) > float(before["test_accuracy"]) + 0.2
    count = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert (problem.param_count, problem.param_bytes) == (count, 4 * count)


def test_logreg_metrics_match_numpy_on_the_test_split():
    data = DataConfig(test_fraction=0.3)
    problem = build_problem(Scenario(model=ModelConfig(name="logreg"), data=data), num_workers=2)
    dataset = load_dataset(data, seed=0)
    assert len(dataset.test_y) == round(0.3 * 1797)
    rng = np.random.default_rng(1)
    params = [{"w": rng.normal(size=(64, 10)).astype(np.float32), "b": rng.normal(size=10).astype(np.float32)}]
    predicted = np.argmax(dataset.test_x @ params[0]["w"] + params[0]["b"], axis=1)
    metrics = problem.evaluate(jax.tree.map(jnp.asarray, params))
    assert float(metrics["test_accuracy"]) == pytest.approx(np.mean(predicted == dataset.test_y), abs=1e-6)
    assert problem.param_count == 650


# --- partitions ----------------------------------------------------------------------------


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each worker's label mix and the overall one."""
    classes = np.unique(labels)
    overall = np.array([np.mean(labels == c) for c in classes])
    return float(np.mean([0.5 * np.abs(np.array([np.mean(labels[p] == c) for c in classes]) - overall).sum() for p in parts]))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(10, 300), classes=st.integers(1, 6), workers=st.integers(1, 10),
    scheme=st.sampled_from(["iid", "dirichlet"]), alpha=st.floats(0.01, 100.0), seed=st.integers(0, 2**31),
)
def test_partition_is_disjoint_covers_everything_and_feeds_every_worker(n, classes, workers, scheme, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    parts = partition_indices(labels, workers, scheme, alpha, np.random.default_rng(seed))
    assert len(parts) == workers
    together = np.concatenate(parts)
    assert np.array_equal(np.sort(together), np.arange(n))  # disjoint and covering
    assert min(len(p) for p in parts) >= 1
    if scheme == "iid":
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 100)
    skew = {
        alpha: np.mean([label_skew(labels, partition_indices(labels, 8, "dirichlet", alpha, np.random.default_rng(s))) for s in range(5)])
        for alpha in (100.0, 1.0, 0.05)
    }
    iid = np.mean([label_skew(labels, partition_indices(labels, 8, "iid", 0.0, np.random.default_rng(s))) for s in range(5)])
    # Large alpha splits every class almost evenly (less skewed than a random IID split).
    assert skew[100.0] < 0.05 and iid < 0.15
    assert skew[100.0] < skew[1.0] < skew[0.05] and iid < skew[1.0]
    assert skew[0.05] > 0.6


def test_partition_errors():
    with pytest.raises(ScenarioError, match="did you mean 'dirichlet'"):
        partition_indices(np.zeros(10), 2, "dirichlett", 0.5, np.random.default_rng(0))
    with pytest.raises(ScenarioError, match="data.alpha"):
        partition_indices(np.zeros(10), 2, "dirichlet", 0.0, np.random.default_rng(0))
    with pytest.raises(ScenarioError, match="data.partition"):
        build_problem(Scenario(model=ModelConfig(name="least_squares"), data=DataConfig(partition="dirichlet")), 2)


# --- user models and errors ----------------------------------------------------------------


def test_user_model_example_loads_and_trains(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    sc = Scenario(
        model=ModelConfig(name="examples.user_model:make_model", options={"features": 5}),
        data=DataConfig(factory="examples.user_model:make_data", batch_size=16),
    )
    problem = build_problem(sc, num_workers=2)
    assert problem.param_count == 6
    params = problem.init(jax.random.PRNGKey(0))
    before = problem.evaluate(params)
    step = jax.jit(lambda p, k: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(problem.loss)(p, problem.make_batch(k % 2, k))))
    for k in range(100):
        params = step(params, jnp.int32(k))
    after = problem.evaluate(params)
    assert float(after["train_loss"]) < 0.05 * float(before["train_loss"])
    assert float(after["test_accuracy"]) > 0.95  # R^2 on the test split


def test_user_model_without_accuracy_on_builtin_data(monkeypatch, tmp_path):
    (tmp_path / "tiny_user_mod.py").write_text(
        "import jax.numpy as jnp\n"
        "def factory(classes=10):\n"
        "    init = lambda key: {'w': jnp.zeros((64, classes))}\n"
        "    loss = lambda p, b: jnp.mean((b['x'] @ p['w'])[jnp.arange(b['y'].shape[0]), b['y']] ** 2)\n"
        "    return init, loss\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = build_problem(scenario("tiny_user_mod:factory"), num_workers=2)
    metrics = problem.evaluate(problem.init(jax.random.PRNGKey(0)))
    assert math.isnan(float(metrics["test_accuracy"])) and float(metrics["train_loss"]) == 0.0
    with pytest.raises(ScenarioError, match=r"model\.options.*colours"):
        build_problem(Scenario(model=ModelConfig(name="tiny_user_mod:factory", options={"colours": 3})), 2)


BAD_INITS = '''
import jax
import jax.numpy as jnp


class Module:  # stands in for equinox.Module (not installed here): a pytree whose fields are leaves
    pass


Module.__module__ = "equinox._module"


@jax.tree_util.register_pytree_node_class
class MLP(Module):
    def __init__(self, weight, activation):
        self.weight, self.activation = weight, activation

    def tree_flatten(self):
        return (self.weight, self.activation), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def loss(p, b):
    return jnp.mean(b["x"])


def module():
    return (lambda key: MLP(jax.random.normal(key, (64, 10)), jax.nn.relu)), loss


def integers():
    return (lambda key: {"w": jnp.zeros((64, 10)), "steps": jnp.zeros((), jnp.int32)}), loss


def empty():
    return (lambda key: {}), loss
'''


@pytest.mark.parametrize(("factory", "returned", "where"), [
    ("module", "an Equinox module", "at [<flat index 1>]: the function relu"),
    ("integers", "a dict", "at ['steps']: an array of int32"),
    ("empty", "a dict", "no arrays at all"),
])
def test_a_user_init_that_is_not_a_pytree_of_float_arrays_gets_one_line_with_the_fix(monkeypatch, tmp_path, capsys,
                                                                                    factory, returned, where):
    # Before: an Equinox module from init ended in a 40-line JAX traceback.
    (tmp_path / "bad_inits.py").write_text(BAD_INITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    from asgd_sim.cli import main

    code = main(["run", str(REPO / "scenarios" / "quickstart.toml"), "--set", f"model.name=bad_inits:{factory}",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"error: model.name: bad_inits:{factory}: init returned {returned} with ") and where in err
    assert "eqx.partition(model, eqx.is_inexact_array)" in err and "eqx.combine" in err
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("no_such_pkg_xyz.models:make", r"model\.name: cannot import 'no_such_pkg_xyz\.models'.*PYTHONPATH"),
        ("examples.user_model:make_modle", r"model\.name: .*no attribute 'make_modle': did you mean 'make_model'"),
        ("mpl", r"model\.name: unknown model 'mpl': did you mean 'mlp'"),
        ("examples.user_model:", r"model\.name: .*package\.module:name"),
    ],
)
def test_bad_model_names_raise_scenario_errors_with_a_fix(monkeypatch, name, pattern):
    monkeypatch.syspath_prepend(str(REPO))
    with pytest.raises(ScenarioError, match=pattern):
        build_problem(scenario(name), num_workers=2)


def test_incompatible_model_and_data_raise_scenario_errors():
    with pytest.raises(ScenarioError, match=r"data\.name.*'text'"):
        build_problem(scenario("transformer"), 2)
    with pytest.raises(ScenarioError, match=r"cnn needs 8x8"):
        build_problem(scenario("cnn", name="synthetic"), 2)
    with pytest.raises(ScenarioError, match=r"data\.name.*did you mean 'digits'"):
        build_problem(scenario("mlp", name="digit"), 2)
    with pytest.raises(ScenarioError, match=r"data\.factory: cannot import"):
        build_problem(scenario("mlp", factory="no_such_pkg_xyz:data"), 2)
