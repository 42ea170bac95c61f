"""The on-disk cache of compiled waves: where $ASGD_SIM_JAX_CACHE points it (checked in fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = ("import jax; from asgd_sim.numerics.compile_cache import enable_compilation_cache; enable_compilation_cache(); "
         "print(jax.config.jax_compilation_cache_dir)")


def cache_dir(setting: str | None, home: Path) -> str:
    env = {**os.environ, "HOME": str(home)}
    env.pop("ASGD_SIM_JAX_CACHE", None)
    if setting is not None:
        env["ASGD_SIM_JAX_CACHE"] = setting
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("setting", [None, "on", "1", "TRUE"])
def test_default_folder(setting: str | None, tmp_path: Path) -> None:
    assert cache_dir(setting, tmp_path) == str(tmp_path / ".cache" / "asgd-sim" / "jax")


@pytest.mark.parametrize("setting", ["off", "0", "false", "No"])
def test_disabled(setting: str, tmp_path: Path) -> None:
    assert cache_dir(setting, tmp_path) == "None"


def test_a_folder_of_ones_own(tmp_path: Path) -> None:
    assert cache_dir(str(tmp_path / "mine"), tmp_path) == str(tmp_path / "mine")
