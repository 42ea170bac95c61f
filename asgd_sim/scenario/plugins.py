"""User code a scenario names as ``"package.module:name"``: models, data, algorithms, optimizers,
staleness rules.

`load_object` imports the module when the object is needed (never when this module is imported)
and turns every way that can fail (a missing module, a module that fails to import, a missing
attribute, something that is not callable) into a ScenarioError naming the scenario key and the
fix, so a user's typo is one line and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ..errors import ScenarioError, closest

__all__ = ["load_object", "is_object_path", "OBJECT_PATH"]

OBJECT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_object_path(value: Any) -> bool:
    """Whether ``value`` is written as ``"package.module:name"``."""
    return isinstance(value, str) and OBJECT_PATH.fullmatch(value) is not None


def load_object(spec: str, path: str) -> Any:
    """Import ``"package.module:name"``; any failure is a ScenarioError at ``path`` with a fix."""
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise ScenarioError(path, f"{spec!r} is not of the form 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ScenarioError(
                path,
                f"cannot import {module_name!r} (no module named {missing!r}): run from the directory "
                "that contains it, add that directory to PYTHONPATH, or pip install the package",
            ) from None
        raise ScenarioError(path, f"importing {module_name!r} failed: it needs {missing!r}, which is not installed") from None
    except Exception as error:  # noqa: BLE001 - the user's module raised while importing (a syntax error, ...)
        raise ScenarioError(path, f"importing {module_name!r} failed: {type(error).__name__}: {error}; fix that module") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [name for name in dir(obj) if not name.startswith("_")]
            hint = closest(part, names)
            raise ScenarioError(
                path,
                f"{module_name!r} has no attribute {attr!r}" + (f": did you mean {hint!r}?" if hint else ""),
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ScenarioError(path, f"{spec} is a {type(obj).__name__}, not a function or class")
    return obj
