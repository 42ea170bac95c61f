"""The Ray backend across machines, on one machine: a local two-node Ray cluster
(`ray.cluster_utils.Cluster`, each node with its own CPU and raylet). Workers, shards and sweep
tasks spread over both nodes, and losing the worker node mid-run loses nothing beyond the last
checkpoint."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real_time  # real runs: their assertions read wall-clock times

ray = pytest.importorskip("ray")  # an optional extra; `make test` installs it (.[test,ray])

from asgd_sim.scenario.files import scenario_from_dict  # noqa: E402
from asgd_sim.trace import Trace  # noqa: E402

from helpers import check_trace, replay_max_diff  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    os.environ.update(JAX_PLATFORMS="cpu", XLA_PYTHON_CLIENT_PREALLOCATE="false")  # (the nodes' workers inherit it)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False})
    other = cluster.add_node(num_cpus=1, resources={"spare": 1})
    cluster.wait_for_nodes()
    yield cluster, other
    ray.shutdown()
    cluster.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow
def test_two_nodes_share_sweep_tasks_workers_and_shards_and_losing_one_loses_only_since_the_checkpoint(two_nodes, tmp_path: Path) -> None:
    from asgd_sim.cli import main
    from asgd_sim.runner import run_scenario

    cluster, other = two_nodes
    head_id, other_id = cluster.head_node.node_id, other.node_id

    # A sweep through --ray-address: its two runs (one CPU each) run on both nodes.
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('[run]\nuntil_updates = 2000\n[[workers]]\ncount = 3\ncompute = { dist = "exponential", mean = 0.05 }\n')
    assert main(["sweep", str(scenario), "--timing-only", "--seeds", "2", "--executor", "ray", "--ray-address", cluster.address,
                 "--out", str(tmp_path / "sweep"), "--quiet"]) == 0
    nodes = {json.loads(p.read_text())["ray_node"] for p in (tmp_path / "sweep").glob("runs/*/result.json")}
    assert nodes == {head_id, other_id}

    # A run whose workers and shards spread over both nodes; the second node goes away mid-run.
    sc = scenario_from_dict({
        "model": {"name": "logreg"}, "run": {"until_updates": 300, "eval_every": 50},
        "workers": [{"count": 2, "compute": 0.01, "failures": {"restart_after": 0.2}}],
        "server": {"shards": 2, "lock": "shard", "checkpoint_every": 50},
    }, name="ray-two-nodes")
    seen: dict = {"errors": []}

    def remove_the_other_node(actors) -> None:
        seen["nodes"] = json.loads(json.dumps(actors.nodes))

        def go() -> None:
            try:
                deadline = time.monotonic() + 120
                while ray.get(actors.coordinator.status.remote())[1] < 130:
                    assert time.monotonic() < deadline, "timed out"
                    time.sleep(0.02)
                cluster.remove_node(other)
            except Exception as error:  # noqa: BLE001 - reported by the test below
                seen["errors"].append(repr(error))
        threading.Thread(target=go, daemon=True).start()

    out = tmp_path / "run"
    result = run_scenario(sc, out, backend="ray", address=cluster.address, emulate=True, on_start=remove_the_other_node)
    assert not seen["errors"], seen["errors"]
    placed = seen["nodes"]
    assert set(placed["shards"]) == {head_id, other_id} and set(placed["workers"]) == {head_id, other_id}, placed
    lost_shard = placed["shards"].index(other_id)
    lost_workers = [w for w, node in enumerate(placed["workers"]) if node == other_id]

    summary = result.summary
    assert summary["stopped"] == "until_updates" and summary["updates"] == 300
    recoveries = summary["backend"]["recoveries"]
    lost = {r["lost"] for r in recoveries}
    assert f"shard {lost_shard}" in lost or "the coordinator" in lost, recoveries
    for r in recoveries:  # back to a checkpoint of this run, at most one interval behind the loss
        assert r["from_update"] % 50 == 0 and 100 <= r["from_update"] <= r["updates"], r
    # Everything now runs on the head node, the dead workers came back there.
    assert {a["node"] for a in summary["backend"]["shard_actors"]} == {head_id}
    assert summary["backend"]["server_node"] == head_id and set(summary["backend"]["worker_nodes"]) == {head_id}
    trace = Trace.load(out)
    check_trace(trace)
    failures = trace.meta["failures"]
    assert sorted({f["worker"] for f in failures}) == lost_workers and all(f.get("restarted") for f in failures), failures
    assert result.metrics["update"].tolist() == list(range(0, 301, 50))
    assert np.isfinite(result.metrics["train_loss"]).all()
    diff, _ = replay_max_diff(out)
    assert diff <= 1e-6, diff
