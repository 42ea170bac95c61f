"""asgd-sim: simulate and run asynchronous parallel SGD.

A SimPy timing engine decides *when* every gradient is read, computed and applied; a JAX
numerics engine computes each gradient at exactly the stale parameters its worker read.
"""

from __future__ import annotations

from .errors import ScenarioError

__all__ = ["ScenarioError"]
__version__ = "0.1.0"
