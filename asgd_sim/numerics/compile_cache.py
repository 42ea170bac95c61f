"""JAX's persistent compilation cache, so a rerun of a scenario skips most compilation."""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache"]


def enable_compilation_cache() -> None:
    """Keep compiled waves on disk so a rerun of a scenario skips most compilation.

    Uses $ASGD_SIM_JAX_CACHE: a folder, "off" (or 0/false/no) to disable, unset (or on/1/true/yes)
    for ~/.cache/asgd-sim/jax; unless the user already configured JAX's own cache.
    """
    setting = os.environ.get("ASGD_SIM_JAX_CACHE", "").strip()
    if setting.lower() in ("off", "0", "false", "no") or jax.config.jax_compilation_cache_dir:
        return
    default = str(Path.home() / ".cache" / "asgd-sim" / "jax")
    where = default if setting.lower() in ("", "on", "1", "true", "yes") else setting
    jax.config.update("jax_compilation_cache_dir", where)
    # Also programs that compile in a tenth of a second: a run's evaluation (0.16 s for the digits
    # MLP) would otherwise be compiled again by every rerun. Eager ops stay out (a few ms each).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)
