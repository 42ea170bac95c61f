"""analysis/ scripts rebuild README figures from sweep folders: run one end to end on a tiny sweep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from asgd_sim.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_locks_figure_from_a_small_timing_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "locks"
    assert main(["sweep", str(ROOT / "scenarios" / "lock_contention.toml"), "--timing-only", "--set", "run.until_updates=300",
                 "--grid", "server.lock=global,none", "--grid", "server.apply_time=0.0005,0.002", "--seeds", "1",
                 "--jobs", "1", "--quiet", "--out", str(sweep)]) == 0
    figure = tmp_path / "locks.png"
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / "locks.py"), str(sweep), "--out", str(figure)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {figure}" in done.stdout
    image = Image.open(figure).convert("RGB")
    colours = np.unique(np.asarray(image).reshape(-1, 3), axis=0)
    assert image.width > 400 and len(colours) > 50  # a drawn figure, not a blank page
