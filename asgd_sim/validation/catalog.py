"""Every check of ``asgd-sim validate``, in docs/THEORY.md order, and choosing among them.

`CHECKS` is the explicit list: a check runs, and shows in ``--list``, because it is named here.
Importing this module is cheap: the check modules import JAX only inside the checks that need it,
so ``validate --list`` and the timing-only checks never load it.
"""

from __future__ import annotations

from .checks_gradients import C6, C11
from .checks_modern import C13, C14, C15, C16, C17
from .checks_numerics import C1, C3, C4, C5, C9
from .checks_timing import C2, C7, C8, C10, C12
from .framework import Check, select_from

__all__ = ["CHECKS", "checks", "select"]

CHECKS: tuple[Check, ...] = (C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13, C14, C15, C16, C17)

assert len({check.name for check in CHECKS}) == len(CHECKS), "two checks share a name"


def checks() -> dict[str, Check]:
    """All checks by name, in docs/THEORY.md order."""
    return {check.name: check for check in CHECKS}


def select(only: str | None) -> list[Check]:
    """The checks named in ``--only`` (comma-separated, any case), or all."""
    return select_from(CHECKS, only)
