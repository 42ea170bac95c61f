"""The Python API for notebooks: callbacks per evaluation, the metrics as a DataFrame, Result.save,
TensorBoard event files, and models passed as objects (examples/: Flax NNX with dropout and batch
norm, Equinox with dropout), whose losses take a PRNG key and mutable state.

Expectations are independent of the code under test: the rows load_run reads back from disk, the
events read back from the files with TensorBoard's protobuf format, and a hand-written training
loop (plain SGD, the key of gradient k derived as the docs say, the state replaced by the
forward pass's new state) for the stateful model on one worker.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

from asgd_sim import load_run
from asgd_sim.cli import main
from asgd_sim.errors import ScenarioError
from asgd_sim.runner import simulate

from helpers import EXP1, MLP32, ideal_scenario

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the examples import as examples.<name>, as from the repository root

scenario = functools.partial(ideal_scenario, "api-test")
SMALL = scenario(MLP32, run={"until_updates": 200, "eval_every": 50, "seed": 1}, workers=[{"count": 4, "compute": EXP1}])


@pytest.fixture(scope="module")
def logged():
    rows: list[dict] = []
    return simulate(SMALL, callbacks=[rows.append]), rows


def test_callbacks_get_every_evaluation_row_once_in_order(logged):
    result, rows = logged
    assert [row["update"] for row in rows] == [0, 50, 100, 150, 200]
    for name, values in result.metrics.items():
        np.testing.assert_array_equal([row[name] for row in rows], values)
    assert isinstance(rows[0]["update"], int)


def test_a_run_stopped_at_its_target_hands_callbacks_the_located_row_not_the_evaluation_it_replaced():
    rows: list[dict] = []
    result = simulate(SMALL, ["run.target_accuracy=0.5", "run.eval_every=100"], callbacks=[rows.append])
    assert result.summary["stopped"] == "target_accuracy"
    assert [row["update"] for row in rows] == list(result.metrics["update"])
    assert rows[-1]["update"] % 100 != 0 and rows[-1]["test_accuracy"] >= 0.5  # located between evaluations


def test_metrics_frame_is_the_frame_load_run_reads_back_from_the_saved_folder(logged, tmp_path):
    result, _ = logged
    folder = result.save(tmp_path / "run")
    assert folder == tmp_path / "run" and (folder / "summary.json").is_file() and (folder / "gradients.parquet").is_file()
    loaded = load_run(folder)
    frame = result.metrics_frame
    assert list(frame.columns) == list(loaded.columns)
    # metrics.csv holds 9 significant digits: the frames agree to that
    pd.testing.assert_frame_equal(frame, loaded, check_exact=False, rtol=1e-8, check_dtype=False)
    assert frame["update"].dtype == loaded["update"].dtype == np.int64
    assert frame.attrs["summary"] == loaded.attrs["summary"]
    assert frame.attrs["scenario"] == loaded.attrs["scenario"]


# --- TensorBoard ---------------------------------------------------------------------------------

def read_events(folder: Path) -> list[tuple[str, int, float, float]]:
    """(tag, step, value, wall time) of every scalar in the event files of ``folder``: TFRecord
    frames (length, its CRC, the event, its CRC) holding tensorboard Event protobufs."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            out += [(v.tag, event.step, v.simple_value, event.wall_time) for v in event.summary.value]
    return out


def test_run_tensorboard_writes_every_metric_per_evaluation_against_updates_and_simulated_time(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    code = main(["run", "scenarios/quickstart.toml", "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"),
                 "--quiet", "--set", "run.until_updates=200", "--set", "run.eval_every=100", "--set", "model.hidden=[16]"])
    assert code == 0
    events = read_events(tmp_path / "tb")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for name in ("train_loss", "test_accuracy", "grad_norm_sq", "staleness_mean"):
        logged = sorted((step, value, wall) for tag, step, value, wall in events if tag == f"metrics/{name}")
        assert [step for step, _, _ in logged] == metrics["update"].tolist()
        np.testing.assert_allclose([value for _, value, _ in logged], metrics[name], rtol=1e-6)
        np.testing.assert_allclose([wall for _, _, wall in logged], metrics["sim_time"], rtol=1e-7)  # wall time = simulated time
    assert not any(tag == "metrics/suboptimality" for tag, *_ in events)  # NaN for a network: not logged
    times = sorted((step, value) for tag, step, value, _ in events if tag == "sim_time")
    np.testing.assert_allclose([v for _, v in times], metrics["sim_time"], rtol=1e-6)


def test_tensorboard_refuses_a_timing_only_run(tmp_path, capsys):
    code = main(["run", "scenarios/quickstart.toml", "--timing-only", "--tensorboard", str(tmp_path / "tb"), "--quiet"])
    assert code == 2 and "--tensorboard: logs evaluations, and a --timing-only run takes none" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_tensorboard_writes_one_sub_folder_per_run(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    code = main(["sweep", "scenarios/quickstart.toml", "--grid", "server.lock=global,shard", "--seeds", "1", "--jobs", "2",
                 "--quiet", "--out", str(tmp_path / "sweep"), "--tensorboard", str(tmp_path / "tb"),
                 "--set", "run.until_updates=100", "--set", "run.eval_every=50",
                 "--set", "model.name=quadratic", "--set", "model.dim=8", "--set", "data.name=none"])  # (quick to compile)
    assert code == 0
    runs = sorted(p.name for p in (tmp_path / "sweep" / "runs").iterdir())
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == runs == ["p000-seed0", "p001-seed0"]
    for run in runs:
        events = read_events(tmp_path / "tb" / run)
        metrics = pd.read_csv(tmp_path / "sweep" / "runs" / run / "metrics.csv")
        logged = sorted((step, value) for tag, step, value, _ in events if tag == "metrics/suboptimality")  # known for a quadratic
        assert [step for step, _ in logged] == metrics["update"].tolist() == [0, 50, 100]
        np.testing.assert_allclose([value for _, value in logged], metrics["suboptimality"], rtol=1e-6)


# --- models as objects: keys and mutable state ----------------------------------------------------

flax_and_equinox = pytest.mark.skipif(importlib.util.find_spec("flax") is None or importlib.util.find_spec("equinox") is None,
                                      reason="the examples need flax and equinox (the test extra installs them)")


@flax_and_equinox
@pytest.mark.slow
def test_flax_nnx_example_with_batch_norm_state_equals_a_hand_written_loop_on_one_worker():
    """One worker, no staleness: the server's parameters and batch-norm statistics after 25
    updates equal plain SGD where gradient k's loss gets key fold_in(fold_in(fold_in(PRNGKey(seed),
    0), k), 1) and the state is replaced by the forward pass's new state."""
    from examples.flax_nnx_model import FlaxMLP

    seed, rate, updates = 5, 0.05, 25
    model = FlaxMLP(hidden=16, dropout=0.3)
    sc = scenario(MLP32, run={"until_updates": updates, "eval_every": updates, "seed": seed}, workers=[{"count": 1, "compute": 1.0}],
                  optimizer={"name": "sgd", "learning_rate": rate})
    result = simulate(sc, problem=model)
    assert result.summary["problem"] == "flax_mlp"

    from asgd_sim.numerics.problems import problem_from_object

    batches = problem_from_object(model, sc, 1).make_batch  # the batches themselves are tested in test_problems.py
    params, state = model.init(jax.random.PRNGKey(seed))
    step = jax.jit(lambda p, s, batch, key: jax.value_and_grad(lambda q: model.loss(q, batch, key=key, state=s), has_aux=True)(p))
    for k in range(updates):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0), k), 1)
        (_, state), grads = step(params, state, batches(jnp.int32(0), jnp.int32(k))["data"], key)
        params = jax.tree.map(lambda p, g: p - rate * g, params, grads)
    np.testing.assert_allclose(ravel_pytree(result.params["params"])[0], ravel_pytree(params)[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(ravel_pytree(result.params["state"])[0], ravel_pytree(state)[0], rtol=2e-5, atol=2e-6)
    initial_mean = ravel_pytree(model.init(jax.random.PRNGKey(seed))[1]["norm"]["mean"])[0]
    assert np.abs(np.asarray(result.params["state"]["norm"]["mean"]) - np.asarray(initial_mean)).max() > 1e-2  # it moved


@flax_and_equinox
@pytest.mark.slow
def test_equinox_example_with_dropout_learns_and_its_key_reaches_the_model():
    from examples.equinox_model import EquinoxMLP

    sc = scenario(MLP32, run={"until_updates": 150, "eval_every": 150, "seed": 3}, workers=[{"count": 4, "compute": EXP1}],
                  optimizer={"name": "sgd", "learning_rate": 0.2})
    a = simulate(sc, problem=EquinoxMLP(width=32, rate=0.2))
    assert a.metrics["test_accuracy"][-1] > 0.6 and a.summary["staleness"]["mean"] > 1  # learns asynchronously
    # without dropout the same schedule gives other numbers: the key does reach the model (that
    # the key is the seed's, exactly, is the Flax test above: deterministic by construction)
    c = simulate(sc, problem=EquinoxMLP(width=32, rate=0.0))
    assert not np.array_equal(ravel_pytree(a.params)[0], ravel_pytree(c.params)[0])


class _NoLoss:
    def init(self, key):
        return {"w": jnp.zeros(3)}


class _StateWithoutKey:
    def init(self, key):
        return {"w": jnp.zeros((64, 10))}, {"m": jnp.zeros(10)}

    def loss(self, params, batch, state):
        return jnp.mean(batch["x"] @ params["w"]), state


class _StatefulNotAPair(_StateWithoutKey):
    def init(self, key):
        return {"w": jnp.zeros((64, 10))}

    def loss(self, params, batch, *, key, state):
        return jnp.mean(batch["x"] @ params["w"]), state


@pytest.mark.parametrize("obj,overrides,message", [
    (_NoLoss(), [], "problem: _NoLoss: has no loss method"),
    (_StateWithoutKey(), [], "its loss takes state but not key"),
    (_StatefulNotAPair(), [], "init must return \\(params, state\\)"),
])
def test_bad_problem_objects_are_one_clear_error(obj, overrides, message):
    with pytest.raises(ScenarioError, match=message):
        simulate(SMALL, overrides, problem=obj)


@flax_and_equinox
def test_a_stateful_model_with_an_algorithm_that_pushes_models_is_refused():
    from examples.flax_nnx_model import FlaxMLP

    with pytest.raises(ScenarioError, match="algorithm.kind = 'local_sgd': its workers push models"):
        simulate(SMALL, ["algorithm.kind=local_sgd"], problem=FlaxMLP(hidden=8))


def test_tensorboard_without_tensorboardx_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    code = main(["run", "scenarios/quickstart.toml", "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2 and "--tensorboard: needs tensorboardX: pip install 'asgd-sim[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
