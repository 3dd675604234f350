"""The import graph of src/lmforge: no cycle between files, and every import runs down the layer order
(imports inside functions count too: a lazy import that hides a cycle is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import lmforge

SRC = Path(lmforge.__file__).parent

# lowest first; a file may import its own layer and the layers below it
LAYERS = [
    ("core", {"core", "errors", "rundir"}),
    ("config", set()),  # every */config.py and recipe.py: the typed recipe tree
    ("model, data", {"model", "data"}),
    ("distributed", {"distributed"}),
    ("checkpoint", {"checkpoint"}),
    ("estimate", {"estimate"}),
    ("train", {"train"}),
    ("tune, evaluate", {"tune", "evaluate"}),
    ("transfer, merge, compress, explain, attack, secure", {"transfer", "merge", "compress", "explain", "attack",
                                                            "secure"}),
    ("report", {"report"}),
    ("pipeline", {"pipeline", "later_stages"}),
    ("commands", set()),  # command.py, every */command.py and *_command.py
    ("cli", {"cli", "__main__"}),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# the tabular section validates its expressions with their parser (a leaf: it imports nothing of lmforge)
CONFIG_HELPERS = {"lmforge.data.tabular.expressions"}


def layer_of(module: str) -> int:
    parts = module.split(".")
    leaf = parts[-1]
    if module == "lmforge.recipe" or leaf == "config" or module in CONFIG_HELPERS:
        return 1
    if leaf == "command" or leaf.endswith("_command"):
        return len(LAYERS) - 2
    area = parts[1] if len(parts) > 1 else "lmforge"
    for index, (_, areas) in enumerate(LAYERS):
        if area in areas:
            return index
    raise AssertionError(f"{module}: in no layer; add its area to LAYERS")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """lmforge modules ``path`` imports anywhere in it (``from a.b import c`` counts as a.b.c when c is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "lmforge" or n.startswith("lmforge."))
    return found & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {i for i in imports_of(p, known) if i != m} for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_files():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_down_the_layers():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {i} ({LAYERS[layer_of(i)][0]})"
              for m, targets in graph().items() for i in sorted(targets)
              if i != "lmforge" and layer_of(i) > layer_of(m)]
    assert upward == []


def test_the_checker_sees_lazy_imports_cycles_and_upward_imports(tmp_path):
    assert find_cycle({"lmforge.a": {"lmforge.b"}, "lmforge.b": {"lmforge.c"}, "lmforge.c": {"lmforge.a"}}) == \
        ["lmforge.a", "lmforge.b", "lmforge.c", "lmforge.a"]
    assert find_cycle({"lmforge.a": {"lmforge.b"}, "lmforge.b": set()}) is None
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from lmforge.train.loop import train\n    import lmforge.core.atomic\n")
    assert imports_of(lazy, set(modules())) == {"lmforge.train.loop", "lmforge.core.atomic"}
    assert layer_of("lmforge.train.loop") > layer_of("lmforge.estimate.memory") > layer_of("lmforge.model.decoder")
    assert layer_of("lmforge.tune.config") == layer_of("lmforge.recipe") < layer_of("lmforge.model.decoder")
    assert layer_of("lmforge.tune.command") == layer_of("lmforge.command") > layer_of("lmforge.pipeline")
