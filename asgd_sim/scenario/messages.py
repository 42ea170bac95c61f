"""The one-line messages of scenario errors: the key path, the value as the user wrote it, the rule
and, where one is close, the key or choice the user probably meant (docs/STYLE.md 6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ScenarioError, closest

__all__ = ["join", "show", "bad", "why_text", "did_you_mean", "reject_unknown"]


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def show(value: Any) -> str:
    """A value as the user wrote it (TOML spelling for booleans), cut short when long."""
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def bad(path: str, value: Any, rule: str) -> ScenarioError:
    return ScenarioError(path, f"= {show(value)}: {rule}")


def why_text(why: str) -> str:
    return f" ({why})" if why else ""


def did_you_mean(word: Any, choices: Sequence[str]) -> str:
    hint = closest(word, choices) if isinstance(word, str) else None
    return f" (did you mean {hint!r}?)" if hint else ""


def reject_unknown(table: dict[str, Any], allowed: Sequence[str], path: str) -> None:
    for key in table:
        if key not in allowed:
            full = join(path, key)
            hint = closest(key, allowed)
            fix = f"did you mean {join(path, hint)!r}?" if hint else f"{path or 'the top level'} takes {', '.join(allowed)}"
            raise ScenarioError(full, f"unknown key {full!r}; {fix}")
