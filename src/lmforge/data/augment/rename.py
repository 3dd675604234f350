"""Consistent renaming of the local variables of Python functions (a label-preserving code augmentation).

Only names a function binds by plain assignment (``x = ...``, ``for x in``, ``with ... as x``) are
renamed, everywhere in that function; arguments (keyword calls would break), names also bound another
way (imports, ``except ... as``, nested ``def``), ``global``/``nonlocal`` names and dunders are kept.
"""

from __future__ import annotations

import ast
import random

_NAMES = ("value", "item", "result", "temp", "data", "obj", "elem", "acc", "node", "entry", "part", "current",
          "count", "total", "buf", "val", "res", "out", "tmp", "cur")


def rename_locals(source: str, rng: random.Random) -> str | None:
    """``source`` with each function's local variables renamed, or None if it does not parse or has none."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    taken = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | {
        node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    edits: dict[tuple[int, int], tuple[int, str, str]] = {}  # (line, byte col) -> (end col, old, new)
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for old in sorted(_plain_locals(function)):
            new = _fresh_name(rng, taken)
            taken.add(new)
            for node in ast.walk(function):
                if isinstance(node, ast.Name) and node.id == old:
                    edits[(node.lineno, node.col_offset)] = (node.end_col_offset, old, new)
    return _apply(source, edits) if edits else None


def _plain_locals(function: ast.AST) -> set[str]:
    stored, other = set(), set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stored.add(node.id)
        elif isinstance(node, ast.arg):
            other.add(node.arg)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            other.update(node.names)
        elif isinstance(node, ast.alias):
            other.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            other.add(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not function:
            other.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            other.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            other.add(node.rest)
    return {name for name in stored - other if not (name.startswith("__") and name.endswith("__"))}


def _fresh_name(rng: random.Random, taken: set[str]) -> str:
    base = rng.choice(_NAMES)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{n}"
    return name


def _apply(source: str, edits: dict[tuple[int, int], tuple[int, str, str]]) -> str | None:
    """Replace the names at (line, UTF-8 column) positions; None if a position does not hold its name."""
    lines = source.split("\n")
    by_line: dict[int, list[tuple[int, int, str, str]]] = {}
    for (line, col), (end, old, new) in edits.items():
        by_line.setdefault(line, []).append((col, end, old, new))
    for line, spans in by_line.items():
        raw = lines[line - 1].encode("utf-8")
        for col, end, old, new in sorted(spans, reverse=True):
            if raw[col:end] != old.encode("utf-8"):
                return None  # positions we cannot trust (e.g. inside an f-string on old Pythons)
            raw = raw[:col] + new.encode("utf-8") + raw[end:]
        lines[line - 1] = raw.decode("utf-8")
    return "\n".join(lines)
