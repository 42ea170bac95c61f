"""The test suite's strict numerics are on: JAX raises on implicit rank promotion, here and in subprocesses.

(tests/conftest.py sets JAX_NUMPY_RANK_PROMOTION=raise before anything imports JAX. If a plugin or
an earlier import loaded JAX first, the setting would silently not apply; this file notices.)
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest


def test_rank_promotion_raises_in_this_process() -> None:
    assert jax.config.jax_numpy_rank_promotion == "raise"
    with pytest.raises(ValueError, match="rank_promotion"):
        jnp.ones(3) + jnp.ones((2, 3))
    assert (jnp.ones((1, 3)) + jnp.ones((2, 3))).shape == (2, 3)  # explicit broadcasting stays allowed


def test_subprocesses_inherit_strict_rank_promotion() -> None:
    code = "import jax; print(jax.config.jax_numpy_rank_promotion)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "raise"
