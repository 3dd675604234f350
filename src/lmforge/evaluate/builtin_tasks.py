"""Built-in tasks made from a curated corpus of Python source (``curate/{train,val}.jsonl``: records with
"id" and "text"; the default corpus's ids are stdlib paths like ``json/decoder.py``), seeded:

- ``docstring_to_name`` (multiple choice): the context is a function's docstring (its first
  ``DOCSTRING_CHARS`` characters) + "\\ndef "; the choices are its name and 3 other function names of the same
  split, in a seeded order; the answer is the index of the true name. A docstring shared by functions of
  different names is ambiguous and left out.
- ``which_package`` (classification): the text is a function's source (its first ``SOURCE_CHARS``
  characters), the label its top-level package (the first part of the document id), among the ``PACKAGES``
  packages of the split with the most functions (or the ones given); every label gets the same number of
  examples. Functions of top-level modules (an id without "/") have no package and are left out.

``make_builtin_tasks`` writes one YAML + JSONL pair per task and split; the test examples come from the
validation documents (``split="val"``), the training examples from the training ones (``split="train"``).
An example is a function of the split's documents (its id is "<document id>:<line>"), so the two splits share
no example; with ``exclude_docs`` they share no context or text either (the same docstring or source can be in
two documents). The same input and seed give byte-identical files.
"""

from __future__ import annotations

import ast
import json
import random
import re
import textwrap
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmforge.core.atomic import atomic_write_text
from lmforge.errors import DataError
from lmforge.evaluate.task_examples import read_task_records
from lmforge.evaluate.tasks import TaskSpec

SPLITS = ("train", "val")
DOCSTRING_CHARS = 300
SOURCE_CHARS = 400
CHOICES = 4
PACKAGES = 4
PACKAGE_TEMPLATE = "{text}\n# package:"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Function:
    doc_id: str
    name: str
    line: int
    docstring: str | None
    source: str

    @property
    def id(self) -> str:
        return f"{self.doc_id}:{self.line}"


@dataclass(frozen=True)
class BuiltinTask:
    name: str
    spec: Path  # the task YAML (load it with ``tasks.load_task``)
    examples: Path
    count: int


def functions(doc_id: str, text: str) -> list[Function]:
    """Every function and method of a Python document, in source order; [] when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = _LINE_BREAK.split(text)  # ast's line numbering (not str.splitlines, which breaks at \f too)
    found = []
    for node in _definitions(tree):  # its whole lines, def to end
        source = textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))
        found.append(Function(doc_id, node.name, node.lineno, ast.get_docstring(node), source))
    return sorted(found, key=lambda f: (f.line, f.name))


_BLOCKS = (ast.stmt, ast.excepthandler, ast.match_case)  # what can hold a def: statements, never expressions


def _definitions(tree: ast.AST):
    """Every function definition in ``tree`` (what ``ast.walk`` finds), visiting statements only: a def is a
    statement, and skipping the expressions makes this several times faster than walking every node."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, _BLOCKS))


def read_functions(docs_jsonl: Path) -> list[Function]:
    """The functions of every document of a curated JSONL file, in file order (remembered for the file as it
    is now: the stages of one run read the same splits several times)."""
    if not docs_jsonl.is_file():
        return _read_functions(docs_jsonl)  # its own error
    stat = docs_jsonl.stat()
    key = (str(docs_jsonl.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _READ:
        if len(_READ) >= 4:  # a run's two splits (and a fine-tuning's own) are worth keeping, not every file
            _READ.clear()
        _READ[key] = _read_functions(docs_jsonl)
    return list(_READ[key])


_READ: dict[tuple, list[Function]] = {}


def _read_functions(docs_jsonl: Path) -> list[Function]:
    found = []
    for line, record in read_task_records(docs_jsonl, ["id", "text"]):
        doc_id, text = (record.get(k) if isinstance(record, dict) else None for k in ("id", "text"))
        if not isinstance(doc_id, str) or not isinstance(text, str):
            raise DataError(f"{docs_jsonl}:{line}: a document needs string fields 'id' and 'text'")
        found += functions(doc_id, text)
    return found


def docstring_to_name(funcs: list[Function], rng: random.Random, max_examples: int,
                      excluded: set[str] = frozenset()) -> list[dict]:
    names = sorted({f.name for f in funcs})
    if len(names) < CHOICES:
        raise DataError(f"docstring_to_name: needs {CHOICES} distinct function names, found {len(names)}")
    by_context: dict[str, list[Function]] = defaultdict(list)
    for f in funcs:
        context = _context(f)
        if context is not None and context not in excluded:
            by_context[context].append(f)
    items = [(context, fs[0]) for context, fs in by_context.items() if len({f.name for f in fs}) == 1]
    records = []
    for context, f in _sample(items, rng, max_examples):
        choices = set()
        while len(choices) < CHOICES - 1:
            name = names[rng.randrange(len(names))]
            if name != f.name:
                choices.add(name)
        choices = sorted(choices)
        answer = rng.randrange(CHOICES)
        choices.insert(answer, f.name)
        records.append({"id": f.id, "context": context, "choices": choices, "answer": answer})
    return records


def which_package(funcs: list[Function], rng: random.Random, max_examples: int,
                  packages: Sequence[str] | None, excluded: set[str] = frozenset()) -> tuple[list[dict], list[str]]:
    labels_of: dict[str, set[str]] = defaultdict(set)
    first: dict[str, Function] = {}
    for f in funcs:
        text = f.source[:SOURCE_CHARS]
        if "/" in f.doc_id and text.strip() and text not in excluded:
            labels_of[text].add(_package(f))
            first.setdefault(text, f)
    by_package: dict[str, list[tuple[str, Function]]] = defaultdict(list)
    for text, f in first.items():
        if len(labels_of[text]) == 1:  # the same source in two packages says nothing about either
            by_package[_package(f)].append((text, f))
    if packages is None:
        counts = Counter({p: len(fs) for p, fs in by_package.items()})
        packages = sorted(p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:PACKAGES])
    packages = list(packages)
    if len(packages) < 2 or any(not by_package.get(p) for p in packages):
        found = ", ".join(sorted(by_package)) or "none"
        raise DataError(f"which_package: needs functions of at least 2 packages ({', '.join(packages)}); "
                        f"found packages: {found}")
    per_label = min(min(len(by_package[p]) for p in packages), max(1, max_examples // len(packages)))
    chosen = [item for p in packages for item in _sample(by_package[p], rng, per_label)]
    order = {f.id: i for i, f in enumerate(funcs)}
    chosen.sort(key=lambda item: order[item[1].id])
    return [{"id": f.id, "text": text, "label": _package(f)} for text, f in chosen], packages


def make_builtin_tasks(docs_jsonl: str | Path, out_dir: str | Path, split: str, seed: int,
                       max_examples: int, *, packages: Sequence[str] | None = None,
                       exclude_docs: str | Path | None = None) -> list[BuiltinTask]:
    """Write ``<out_dir>/<task>.<split>.yaml`` + ``.jsonl`` for every built-in task from ``docs_jsonl`` (the
    ``split`` documents), at most ``max_examples`` examples each, seeded by ``seed``, task and split.

    ``packages`` fixes which_package's label set (e.g. the training split's, so that the validation task has
    the same labels); by default it is the split's ``PACKAGES`` packages with the most functions.
    ``exclude_docs`` (e.g. the training documents when making the validation split): a context or text that
    any function of those documents also has is left out, so that no example's content is seen in both."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    docs_jsonl, out_dir = Path(docs_jsonl), Path(out_dir)
    funcs = read_functions(docs_jsonl)
    other = [] if exclude_docs is None else read_functions(Path(exclude_docs))
    contexts, texts = {_context(f) for f in other}, {f.source[:SOURCE_CHARS] for f in other}
    try:
        made = {"docstring_to_name": (docstring_to_name(funcs, _rng(seed, "docstring_to_name", split),
                                                        max_examples, contexts), {"kind": "multiple_choice"})}
        records, labels = which_package(funcs, _rng(seed, "which_package", split), max_examples, packages, texts)
    except DataError as exc:
        raise DataError(f"{docs_jsonl}: {exc}") from None
    made["which_package"] = (records, {"kind": "classification", "labels": labels, "template": PACKAGE_TEMPLATE,
                                       "verbalizers": {p: f" {p}" for p in labels}})
    written = []
    for name, (records, keys) in made.items():
        examples = out_dir / f"{name}.{split}.jsonl"
        spec = TaskSpec(name=name, path=examples.name, **keys)  # validated like a user's task
        atomic_write_text(examples, "".join(_json_line(r) for r in records))
        atomic_write_text(out_dir / f"{name}.{split}.yaml", yaml.safe_dump(
            spec.model_dump(mode="json", exclude_unset=True), sort_keys=False, allow_unicode=True))
        written.append(BuiltinTask(name, out_dir / f"{name}.{split}.yaml", examples, len(records)))
    return written


def _context(f: Function) -> str | None:
    """docstring_to_name's context of ``f``; None without a docstring."""
    doc = (f.docstring or "").strip()
    return doc[:DOCSTRING_CHARS].rstrip() + "\ndef " if doc else None


def _package(f: Function) -> str:
    return f.doc_id.split("/", 1)[0]


def _rng(seed: int, task: str, split: str) -> random.Random:
    return random.Random(f"{seed}:{task}:{split}")  # a str seed is hashed with SHA-512: the same in every process


def _sample(items: list, rng: random.Random, n: int) -> list:
    """At most ``n`` of ``items``, seeded, in their original order."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(rng.sample(range(len(items)), n))]


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
