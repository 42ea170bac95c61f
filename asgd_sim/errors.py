"""The one error type a user should ever see from bad input, and the "did you mean" that fixes it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ScenarioError", "closest"]


class ScenarioError(ValueError):
    """A scenario (file, override or argument) is invalid.

    The message names the key path, the bad value, the rule it breaks and a fix, e.g.
    ``workers[1].compute.cv = -0.3: must be >= 0 (coefficient of variation)``. The CLI prints it
    and exits with status 2; it never becomes a traceback.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.detail = message
        if not path:
            text = message
        elif message.startswith("= "):  # "key = value: rule"
            text = f"{path} {message}"
        else:
            text = f"{path}: {message}"
        super().__init__(text)


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``word``, or None when nothing is reasonably close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
