"""Derived-column expressions: parsed with ``ast`` into a whitelist, never ``eval``-ed.

Allowed: numbers, column names, ``+ - * / // % **``, unary minus, comparisons (``<``, ``>=``, ...,
giving 0/1 masks), and calls to the numpy functions in ``FUNCTIONS`` with positional arguments.
"""

from __future__ import annotations

import ast

import numpy as np

FUNCTIONS = {
    "abs": np.abs, "sqrt": np.sqrt, "log": np.log, "log1p": np.log1p, "log2": np.log2, "log10": np.log10,
    "exp": np.exp, "floor": np.floor, "ceil": np.ceil, "round": np.round, "minimum": np.minimum,
    "maximum": np.maximum, "clip": np.clip, "where": np.where, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
}
_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
           ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}
_COMPARE = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
            ast.Eq: np.equal, ast.NotEq: np.not_equal}


class ExpressionError(ValueError):
    pass


def parse_expression(text: str) -> ast.Expression:
    """Parse and check ``text``; raise ExpressionError naming the first thing not allowed."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression {text!r}: {exc.msg}") from None
    nodes = list(ast.walk(tree))
    for node in nodes:  # kinds of node first: "Attribute is not allowed" says more than "unknown function"
        _check_kind(node)
    for node in nodes:
        if isinstance(node, ast.Call):
            _check_call(node)
    return tree


def column_names(tree: ast.Expression) -> set[str]:
    """The column names an expression reads (function names excluded)."""
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def evaluate(tree: ast.Expression, columns: dict[str, np.ndarray]) -> np.ndarray:
    """The expression's value for every row: a float64 array."""
    with np.errstate(all="ignore"):  # log(0), x / 0: -inf, inf and nan, reported by the caller
        value = _eval(tree.body, columns)
    n = len(next(iter(columns.values()))) if columns else 1
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()


def _check_kind(node: ast.AST) -> None:
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.Name, ast.Constant, ast.Load,
               *_BINARY, *_UNARY, *_COMPARE)
    if not isinstance(node, allowed):
        raise ExpressionError(f"{type(node).__name__} is not allowed (only arithmetic, comparisons and "
                              f"the functions {', '.join(sorted(FUNCTIONS))})")
    if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, (int, float))):
        raise ExpressionError(f"constant {node.value!r} is not a number")


def _check_call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        raise ExpressionError(f"unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
    if node.keywords:
        raise ExpressionError(f"{node.func.id}(): keyword arguments are not allowed")


def _eval(node: ast.AST, columns: dict[str, np.ndarray]):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return columns[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, columns), _eval(node.right, columns))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, columns))
    if isinstance(node, ast.Compare):
        left, result = _eval(node.left, columns), True
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, columns)
            result = np.logical_and(result, _COMPARE[type(op)](left, right))
            left = right
        return np.asarray(result, dtype=np.float64)
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_eval(arg, columns) for arg in node.args))
    raise ExpressionError(f"{type(node).__name__} is not allowed")  # unreachable after parse_expression
