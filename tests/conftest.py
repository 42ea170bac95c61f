"""pytest configuration only. Shared builders and helpers live in tests/helpers.py.

Strict numerics: JAX raises on implicit rank promotion (``x + y`` with shapes (3,) and (2, 3)
silently broadcasting is a bug in this code base). The setting is an environment variable, set
here before any test module imports JAX, so that JAX in this process and in every subprocess a
test starts (the CLI, the devices backend, sweep workers, Ray workers) reads it at import.
Warnings raised from asgd_sim's own modules are errors: see ``filterwarnings`` in pyproject.toml.
"""

from __future__ import annotations

import os

os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"
