"""Per-worker parameters as formulas of the worker's index: a small, safe expression language.

The papers on heterogeneous workers give each worker a compute time that follows from its index
(Tyurin & Richtarik 2023, Maranjyan et al. 2025: worker j takes 1 + sqrt(j) + |N(0, j + 1)| per
gradient). A scenario writes such a parameter as a string in a distribution table:

    [[workers]]
    count = 6174
    compute = { dist = "half_normal", shift = "1 + sqrt(i)", scale = "sqrt(i + 1)" }

Names: ``i`` (the worker's index in its group, from 0) and ``n`` (the group's count); constants
``pi`` and ``e``; functions ``sqrt``, ``log``, ``log2``, ``log10``, ``exp``, ``abs``, ``floor``,
``ceil``, ``min``, ``max``; operators ``+ - * / // % **``, unary minus and parentheses. The formula
is parsed into Python's syntax tree and evaluated by walking it, allowing only those nodes: no
attribute, no subscript, no other name and no call to anything else, so a scenario file can never
run code (no ``eval``). A formula is evaluated once for all workers of a group, as numpy arrays.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import numpy as np

from ..errors import ScenarioError

__all__ = ["Formula", "parse_formula", "NAMES", "FUNCTIONS"]

NAMES = ("i", "n")
CONSTANTS = {"pi": math.pi, "e": math.e}
FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "sqrt": np.sqrt, "log": np.log, "log2": np.log2, "log10": np.log10, "exp": np.exp, "abs": np.abs,
    "floor": np.floor, "ceil": np.ceil,
    "min": lambda *args: np.minimum.reduce(np.broadcast_arrays(*args)),
    "max": lambda *args: np.maximum.reduce(np.broadcast_arrays(*args)),
}
_BINARY: dict[type, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power,
}
_MAX_LENGTH = 200


class Formula:
    """A parsed formula of ``i`` and ``n``; ``values(count)`` evaluates it for workers 0..count-1."""

    __slots__ = ("text", "_tree")

    def __init__(self, text: str, tree: ast.expr) -> None:
        self.text = text
        self._tree = tree

    def values(self, count: int) -> np.ndarray:
        """The formula at i = 0..count-1 (float64; may hold NaN or inf where the math says so)."""
        names = {"i": np.arange(count, dtype=np.float64), "n": np.full(count, float(count))}
        with np.errstate(all="ignore"):
            out = _evaluate(self._tree, names)
        return np.broadcast_to(np.asarray(out, np.float64), (count,)).copy()

    def __repr__(self) -> str:
        return f"Formula({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Formula) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def parse_formula(text: str, path: str) -> Formula:
    """Parse ``text`` as a formula of the worker index, or raise a ScenarioError naming ``path``."""
    if len(text) > _MAX_LENGTH:
        raise ScenarioError(path, f"= {text[:40]!r}...: a formula may be at most {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ScenarioError(path, f"= {text!r}: not a formula ({error.msg}); write e.g. \"1 + sqrt(i)\" with i the worker's "
                            "index in its group and n the group's count") from None
    _check(tree, text, path)
    return Formula(text, tree)


def _check(node: ast.AST, text: str, path: str) -> None:
    """Allow only numbers, the names, the constants, arithmetic and the listed functions."""

    def refuse(what: str) -> ScenarioError:
        return ScenarioError(path, f"= {text!r}: {what}; a formula may use numbers, i (the worker's index), n (the group's "
                             f"count), pi, e, + - * / // % **, and {', '.join(FUNCTIONS)}")

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise refuse(f"{node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        if node.id not in NAMES and node.id not in CONSTANTS:
            raise refuse(f"unknown name {node.id!r}")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise refuse(f"operator {type(node.op).__name__} is not allowed")
        _check(node.left, text, path)
        _check(node.right, text, path)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise refuse(f"operator {type(node.op).__name__} is not allowed")
        _check(node.operand, text, path)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords or not node.args:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise refuse(f"{name}(...) is not an allowed function call")
        if node.func.id not in ("min", "max") and len(node.args) != 1:
            raise refuse(f"{node.func.id} takes one argument")
        for arg in node.args:
            _check(arg, text, path)
    else:
        raise refuse(f"{type(node).__name__} is not allowed")


def _evaluate(node: ast.AST, names: dict[str, np.ndarray]) -> np.ndarray | float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return names[node.id] if node.id in names else CONSTANTS[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return FUNCTIONS[node.func.id](*(_evaluate(arg, names) for arg in node.args))
