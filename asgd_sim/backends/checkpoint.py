"""Server checkpoints of a real run, and resuming from the last one.

Every ``server.checkpoint_every`` logical updates the real server takes a consistent cut (under
its state lock, at the commit of that update): the shard rows, each shard's optimizer state, the
versions, each worker's next local iteration k (EASGD: each worker's own model), the clock, and the
trace so far. A background
thread writes it to ``RUN_DIR/checkpoints/<updates>/`` (``state.npz``, ``meta.json`` and the
trace as ``gradients.parquet`` / ``updates.parquet``) and then, atomically, points
``RUN_DIR/checkpoints/latest.json`` at it: a process killed at any instant (kill -9 included)
leaves the previous complete checkpoint in place. Older checkpoints are removed.

``asgd-sim run ... --out RUN_DIR --resume`` continues from the latest one: the server restarts
with those parameters, optimizer states and versions, the clock continues from the checkpoint's
time, the gradients that were in flight are marked cancelled (they died with the process), and
the workers pull afresh. The resumed trace is the checkpoint's trace plus what follows, so a
replay of the finished run still reproduces its parameters.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ScenarioError
from ..trace import CANCELLED, PENDING, Trace, TraceBuilder

__all__ = ["Checkpoint", "CheckpointWriter", "load_checkpoint"]

POINTER = "latest.json"


@dataclass
class Checkpoint:
    updates: int
    t: float
    versions: list[int]
    rows: list[np.ndarray]  # per shard
    state_leaves: list[list[np.ndarray]]  # per shard: the optimizer state's leaves in tree order
    next_k: list[int]
    trace: Trace
    failures: list[dict[str, Any]]
    folder: Path
    models: list[list[np.ndarray]] | None = None  # EASGD: per worker, its own model's shard rows

    def resumed_trace(self) -> TraceBuilder:
        """The trace to continue from: gradients in flight at the checkpoint died with the
        process, so they are cancelled."""
        builder = TraceBuilder.from_trace(self.trace)
        for gid in range(builder.num_gradients):
            if builder.fate[gid] == PENDING:
                builder.fate[gid] = CANCELLED
        return builder


class CheckpointWriter:
    """Writes checkpoint snapshots in a background thread (the newest pending one wins)."""

    def __init__(self, run_dir: str | Path, keep: int = 1) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.written: list[int] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self.thread.start()

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self.queue.put(snapshot)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            while item is not None:  # skip to the newest snapshot queued
                try:
                    newer = self.queue.get_nowait()
                except queue.Empty:
                    break
                if newer is None:
                    self._write_safely(item)
                    return
                item = newer
            if item is None:
                return
            self._write_safely(item)

    def _write_safely(self, snapshot: dict[str, Any]) -> None:
        try:
            write_checkpoint(self.root, snapshot)
            self.written.append(int(snapshot["updates"]))
            self._prune(int(snapshot["updates"]))
        except Exception as error:  # noqa: BLE001 - a failed checkpoint must not stop training
            self.errors.append(f"{type(error).__name__}: {error}")

    def _prune(self, newest: int) -> None:
        kept = sorted((int(p.name) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
        for updates in kept[self.keep:]:
            if updates != newest:
                shutil.rmtree(self.root / f"{updates:09d}", ignore_errors=True)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put(None)
        self.thread.join(timeout=60)


def write_checkpoint(root: Path, snapshot: dict[str, Any]) -> Path:
    import jax

    folder = root / f"{int(snapshot['updates']):09d}"
    tmp = root / f".tmp-{int(snapshot['updates']):09d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    for s, (row, state) in enumerate(zip(snapshot["rows"], snapshot["states"])):
        arrays[f"row_{s}"] = np.asarray(row)
        for i, leaf in enumerate(jax.tree.leaves(state)):
            arrays[f"state_{s}_{i}"] = np.asarray(leaf)
    models = snapshot.get("models") or []
    for w, rows in enumerate(models):
        for s, row in enumerate(rows):
            arrays[f"model_{w}_{s}"] = np.asarray(row)
    np.savez(tmp / "state.npz", **arrays)
    snapshot["trace"].save(tmp)
    meta = {"updates": int(snapshot["updates"]), "t": float(snapshot["t"]), "versions": [int(v) for v in snapshot["versions"]],
            "next_k": [int(k) for k in snapshot["next_k"]], "shards": len(snapshot["rows"]),
            "state_leaves": len(jax.tree.leaves(snapshot["states"][0])), "failures": snapshot.get("failures", []),
            "models": len(models)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    for name in ("state.npz", "meta.json", "gradients.parquet", "updates.parquet"):
        with open(tmp / name, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    pointer = root / (POINTER + ".tmp")
    pointer.write_text(json.dumps({"folder": folder.name, "updates": meta["updates"], "t": meta["t"]}))
    with open(pointer, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(pointer, root / POINTER)
    return folder


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The latest complete checkpoint of ``run_dir`` (ScenarioError if it has none)."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / POINTER
    if not pointer.is_file():
        raise ScenarioError(str(run_dir), "has no checkpoint to resume from (checkpoints/latest.json is missing); run with "
                            "--set server.checkpoint_every=N and --out this folder first")
    folder = root / json.loads(pointer.read_text())["folder"]
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "state.npz") as data:
        rows = [data[f"row_{s}"] for s in range(meta["shards"])]
        leaves = [[data[f"state_{s}_{i}"] for i in range(meta["state_leaves"])] for s in range(meta["shards"])]
        models = [[data[f"model_{w}_{s}"] for s in range(meta["shards"])] for w in range(meta.get("models", 0))]
    return Checkpoint(updates=meta["updates"], t=meta["t"], versions=meta["versions"], rows=rows, state_leaves=leaves,
                      next_k=meta["next_k"], trace=Trace.load(folder), failures=meta.get("failures", []), folder=folder,
                      models=models or None)
