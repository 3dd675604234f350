"""Evaluation tasks: every kind loads from JSONL, CSV and Parquet into typed examples; every bad input is one
line naming the file and line (or the YAML key); the built-in tasks made from stdlib sources are
deterministic, disjoint between splits, correct and balanced."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lmforge.data.readers import stdlib_files
from lmforge.errors import DataError
from lmforge.evaluate.builtin_tasks import DOCSTRING_CHARS, SOURCE_CHARS, functions, make_builtin_tasks
from lmforge.evaluate.tasks import (ClassificationExample, GenerationExample, MultipleChoiceExample,
                                    PerplexityExample, TaskSpec, load_task)

RECORDS = {
    "multiple_choice": [
        {"id": "q1", "context": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1},
        {"id": "q2", "context": "The capital of France is", "choices": ["Paris", "Rome"], "answer": "Rome"},
    ],
    "classification": [
        {"id": "c1", "text": "great film", "label": "pos"},
        {"id": "c2", "text": "dull {plot}", "label": "neg"},
    ],
    "generation": [{"id": "g1", "prompt": "def add(a, b):", "answer": "return a + b"}],
    "perplexity": [{"id": "p1", "text": "import os\n"}, {"id": "p2", "text": "x = 1\n"}],
}
EXPECTED = {
    "multiple_choice": (MultipleChoiceExample("q1", "2 + 2 =", ("3", "4", "5"), 1),
                        MultipleChoiceExample("q2", "The capital of France is", ("Paris", "Rome"), 1)),
    "classification": (ClassificationExample("c1", "great film", "pos"),
                       ClassificationExample("c2", "dull {plot}", "neg")),
    "generation": (GenerationExample("g1", "def add(a, b):", "return a + b"),),
    "perplexity": (PerplexityExample("p1", "import os\n"), PerplexityExample("p2", "x = 1\n")),
}
SPEC_KEYS = {"classification": {"labels": ["neg", "pos"]}}


def write_examples(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".csv":
        header = list(dict.fromkeys(k for r in records for k in r))
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for r in records:  # a list (choices) as JSON text, like the loader expects
                writer.writerow([json.dumps(r[k]) if isinstance(r.get(k), list) else r.get(k, "") for k in header])
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_task(folder: Path, kind: str, records: list[dict], fmt: str = "jsonl", **keys) -> Path:
    write_examples(folder / f"examples.{fmt}", records)
    spec = {"name": "t", "kind": kind, "path": f"examples.{fmt}", **SPEC_KEYS.get(kind, {}), **keys}
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    return folder / "task.yaml"


def error_of(yaml_path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_task(yaml_path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------ loading

@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_every_kind_loads_from_every_format(tmp_path, kind, fmt):
    records = RECORDS[kind]
    if kind == "multiple_choice" and fmt == "parquet":  # a Parquet column has one type: answers as text here
        records = [{**r, "answer": r["choices"][r["answer"]] if isinstance(r["answer"], int) else r["answer"]}
                   for r in records]
    task = load_task(write_task(tmp_path, kind, records, fmt))
    assert (task.name, task.kind, task.path) == ("t", kind, tmp_path / f"examples.{fmt}")
    assert task.examples == EXPECTED[kind]
    assert task.train_examples == ()


def test_renamed_fields_relative_paths_verbalizers_and_few_shot_prompts(tmp_path):
    write_examples(tmp_path / "data" / "test.jsonl", [{"key": 7, "review": "great film", "y": "pos"}])
    write_examples(tmp_path / "data" / "train.csv", [{"key": f"t{i}", "review": f"film {i}", "y": ["neg", "pos"][i % 2]}
                                                      for i in range(6)])
    spec = {"name": "reviews", "kind": "classification", "path": "../data/test.jsonl",
            "train_path": "../data/train.csv",
            "id_field": "key", "text_field": "review", "label_field": "y", "labels": ["neg", "pos"],
            "template": "Review: {text}\nSentiment:", "verbalizers": {"pos": " good"}, "few_shot": 2}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "reviews.yaml").write_text(yaml.safe_dump(spec))
    task = load_task(tmp_path / "tasks" / "reviews.yaml")
    assert task.examples == (ClassificationExample("7", "great film", "pos"),)
    assert len(task.train_examples) == 6 and task.train_examples[1] == ClassificationExample("t1", "film 1", "pos")
    assert task.verbalizers == {"neg": "neg", "pos": " good"}
    prompt = task.prompt(task.examples[0], seed=3)
    assert prompt == task.prompt(task.examples[0], seed=3)
    shots = prompt.split("\n\n")
    assert len(shots) == 3 and shots[-1] == "Review: great film\nSentiment:"
    for shot in shots[:2]:
        text = shot.removeprefix("Review: ").split("\n")[0]
        demo = next(e for e in task.train_examples if e.text == text)
        assert shot == f"Review: {demo.text}\nSentiment:{task.verbalizers[demo.label]}"


# ------------------------------------------------------------------------------------ bad examples

MC = RECORDS["multiple_choice"][0]
CL = RECORDS["classification"][0]
BAD_EXAMPLES = [
    # (kind, format, records, message after "<examples file>:")
    ("multiple_choice", "jsonl", [MC, {"id": "q2", "choices": ["a"], "answer": 0}], "2: missing field 'context'"),
    ("classification", "csv", [CL, CL | {"id": "c2", "label": None}], "3: missing field 'label'"),
    ("classification", "parquet", [{"id": "c1", "text": "x"}], "1: missing field 'label'"),
    ("classification", "jsonl", [CL | {"label": "meh"}], "1: label 'meh' is not one of the labels (neg, pos)"),
    ("classification", "csv", [CL, CL | {"id": "c2", "label": "meh"}],
     "3: label 'meh' is not one of the labels (neg, pos)"),
    ("multiple_choice", "jsonl", [MC | {"choices": []}], "1: field 'choices' is empty"),
    ("multiple_choice", "jsonl", [MC | {"answer": 3}], "1: answer 3 is out of range for 3 choices"),
    ("multiple_choice", "jsonl", [MC | {"answer": -1}], "1: answer -1 is out of range for 3 choices"),
    ("multiple_choice", "csv", [MC | {"answer": 7}], "2: answer 7 is out of range for 3 choices"),
    ("multiple_choice", "jsonl", [MC | {"answer": "6"}], "1: answer '6' is not one of the choices"),
    ("multiple_choice", "parquet", [MC | {"answer": "6"}], "1: answer '6' is not one of the choices"),
    ("multiple_choice", "jsonl", [MC | {"answer": True}],
     "1: field 'answer' must be a choice index or the choice's text, got bool"),
    ("multiple_choice", "jsonl", [MC | {"choices": ["a", "a"]}], "1: field 'choices' repeats the choice 'a'"),
    ("multiple_choice", "jsonl", [MC | {"choices": ["a", 2]}],
     "1: field 'choices': choice 1 must be a string, got int"),
    ("multiple_choice", "csv", [MC | {"choices": "a|b"}],
     "2: field 'choices' must be a JSON list of strings in a CSV file"),
    ("perplexity", "jsonl", [{"id": "p1", "text": "a"}, {"id": "p2", "text": "b"}, {"id": "p1", "text": "c"}],
     "3: duplicate id 'p1' (first at line 1)"),
    ("perplexity", "csv", [{"id": "p1", "text": "a"}, {"id": "p1", "text": "b"}],
     "3: duplicate id 'p1' (first at line 2)"),
    ("perplexity", "jsonl", [{"id": "p1", "text": 12}], "1: field 'text' must be a string, got int"),
    ("generation", "parquet", [{"id": "g1", "prompt": "a", "answer": 3}],
     "1: field 'answer' must be a string, got int"),
    ("classification", "jsonl", [CL | {"text": ["a"]}], "1: field 'text' must be a string, got list"),
    ("perplexity", "jsonl", [{"id": 1.5, "text": "a"}], "1: field 'id' must be a string or an integer, got float"),
]


@pytest.mark.parametrize("kind, fmt, records, message", BAD_EXAMPLES)
def test_a_bad_example_is_one_line_naming_file_and_line(tmp_path, kind, fmt, records, message):
    assert error_of(write_task(tmp_path, kind, records, fmt)) == f"{tmp_path / f'examples.{fmt}'}:{message}"


def test_unreadable_records_and_empty_files_name_their_line(tmp_path):
    path = write_task(tmp_path, "perplexity", RECORDS["perplexity"])
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"id": "p1", "text": "a"}\n\n{"id": "p2", "text": \n{"id": 1}\n')
    assert error_of(path) == f"{examples}:3: invalid JSON"
    examples.write_bytes(b'{"id": "p1", "text": "\xff"}\n')
    assert error_of(path) == f"{examples}:1: invalid UTF-8"
    examples.write_text("\n")
    assert error_of(path) == f"{examples}: no examples"
    (tmp_path / "examples.parquet").write_bytes(b"PAR1 not really")
    path.write_text(yaml.safe_dump({"name": "t", "kind": "perplexity", "path": "examples.parquet"}))
    assert error_of(path) == f"{tmp_path / 'examples.parquet'}: unreadable Parquet file"
    (tmp_path / "examples.txt").write_text("x\n")
    path.write_text(yaml.safe_dump({"name": "t", "kind": "perplexity", "path": "examples.txt"}))
    assert error_of(path) == (f"{tmp_path / 'examples.txt'}: unknown examples format '.txt' "
                              "(expected .jsonl, .csv or .parquet)")


# ------------------------------------------------------------------------------------ bad specs

BAD_SPECS = [
    # (YAML keys over a valid classification spec, message after "<task.yaml>: ")
    ({"kind": "ranking"}, "kind: Input should be 'multiple_choice', 'classification', 'generation' or 'perplexity' "
                          "(got 'ranking')"),
    ({"labelz": ["a"]}, "labelz: unknown key"),
    ({"context_field": "question"}, "context_field: not a key of a classification task (got 'question')"),
    ({"labels": None}, "(top level): a classification task needs labels (its label set)"),
    ({"labels": ["pos"]}, "labels: List should have at least 2 items after validation, not 1"),
    ({"labels": ["pos", "pos"]}, "labels: labels repeat 'pos'"),
    ({"verbalizers": {"neutral": " meh"}}, "verbalizers: 'neutral' is not one of the labels"),
    ({"verbalizers": {"neg": " x", "pos": " x"}}, "verbalizers: two labels share the word ' x'"),
    ({"template": "Review: {review}"}, "template: the template must contain {text} (got 'Review: {review}')"),
    ({"few_shot": 3}, "few_shot: few_shot needs train_path (the examples to draw demonstrations from) (got 3)"),
    ({"name": "my task", "few_shot": -1},
     "name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]*$' (got 'my task'); "
     "few_shot: Input should be greater than or equal to 0 (got -1)"),
]


@pytest.mark.parametrize("keys, message", BAD_SPECS)
def test_a_bad_spec_is_one_line_naming_the_key(tmp_path, keys, message):
    path = write_task(tmp_path, "classification", RECORDS["classification"])
    spec = {**yaml.safe_load(path.read_text()), **keys}
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    assert error_of(path) == f"{path}: {message}"


def test_bad_task_files(tmp_path):
    path = tmp_path / "task.yaml"
    assert error_of(path) == f"{path}: no such task file"
    path.write_text("name: [t\n")
    assert error_of(path).startswith(f"{path}:2:1: invalid YAML: ")
    path.write_text("- name\n")
    assert error_of(path) == f"{path}: a task is a mapping of keys, got list"
    path.write_text(yaml.safe_dump({"name": "t", "kind": "perplexity", "path": "missing.jsonl"}))
    assert error_of(path) == f"{path}: path: no such file: {tmp_path / 'missing.jsonl'}"
    write_examples(tmp_path / "e.jsonl", RECORDS["perplexity"])
    path.write_text(yaml.safe_dump({"name": "t", "kind": "perplexity", "path": "e.jsonl", "train_path": "no.csv"}))
    assert error_of(path) == f"{path}: train_path: no such file: {tmp_path / 'no.csv'}"


# ------------------------------------------------------------------------------------ built-in tasks

PACKAGES = ["email", "concurrent", "wsgiref", "multiprocessing", "json", "urllib", "curses", "zoneinfo"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """~40 small stdlib files of 8 packages, every other file of each package in val, as curated JSONL."""
    root, files = stdlib_files()
    rels = [f.relative_to(root).as_posix() for f in files if f.stat().st_size < 40_000]
    chosen = [[r for r in rels if r.startswith(f"{p}/") and "test" not in r][:5] for p in PACKAGES]
    folder = tmp_path_factory.mktemp("corpus")
    texts = {}
    for split, parts in (("train", [c[0::2] for c in chosen]), ("val", [c[1::2] for c in chosen])):
        docs = [{"id": r, "text": (root / r).read_text(encoding="utf-8")} for part in parts for r in part]
        texts.update({d["id"]: d["text"] for d in docs})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    made = {}
    for out in ("a", "b"):
        train = make_builtin_tasks(folder / "train.jsonl", folder / out, "train", 7, 120)
        labels = load_task(train[1].spec).spec.labels
        val = make_builtin_tasks(folder / "val.jsonl", folder / out, "val", 7, 120, packages=labels,
                                 exclude_docs=folder / "train.jsonl")
        made[out] = {(t.name, split): t for split, ts in (("train", train), ("val", val)) for t in ts}
    return {"folder": folder, "texts": texts, "docs": len(texts), "made": made}


def test_builtin_tasks_are_byte_identical_for_the_same_input_and_seed(corpus):
    a, b = corpus["made"]["a"], corpus["made"]["b"]
    assert sorted(a) == [(n, s) for n in ("docstring_to_name", "which_package") for s in ("train", "val")]
    for key in a:
        assert a[key].spec.name == f"{key[0]}.{key[1]}.yaml" and a[key].examples.name == f"{key[0]}.{key[1]}.jsonl"
        assert a[key].spec.read_bytes() == b[key].spec.read_bytes()
        assert a[key].examples.read_bytes() == b[key].examples.read_bytes()
    other = make_builtin_tasks(corpus["folder"] / "train.jsonl", corpus["folder"] / "c", "train", 8, 120)
    assert other[0].examples.read_bytes() != a["docstring_to_name", "train"].examples.read_bytes()


def test_builtin_splits_share_no_example(corpus):
    made = corpus["made"]["a"]
    for name, field in (("docstring_to_name", "context"), ("which_package", "text")):
        train, val = (load_task(made[name, s].spec) for s in ("train", "val"))
        assert len(train.examples) == made[name, "train"].count and len(val.examples) == made[name, "val"].count
        assert not {e.id for e in train.examples} & {e.id for e in val.examples}
        assert not {getattr(e, field) for e in train.examples} & {getattr(e, field) for e in val.examples}
        train_docs = {e.id.rsplit(":", 1)[0] for e in train.examples}
        assert train_docs.isdisjoint(e.id.rsplit(":", 1)[0] for e in val.examples)


def by_id(corpus, doc_ids) -> dict:
    return {f.id: f for d in set(doc_ids) for f in functions(d, corpus["texts"][d])}


def test_docstring_to_name_answers_are_the_true_names(corpus):
    for split in ("train", "val"):
        task = load_task(corpus["made"]["a"]["docstring_to_name", split].spec)
        assert task.kind == "multiple_choice" and 40 <= len(task.examples) <= 120
        funcs = by_id(corpus, [e.id.rsplit(":", 1)[0] for e in task.examples])
        for e in task.examples:
            f = funcs[e.id]
            assert e.choices[e.answer] == f.name
            assert e.context == f.docstring.strip()[:DOCSTRING_CHARS].rstrip() + "\ndef "
            assert len(set(e.choices)) == 4 and f.name not in e.choices[:e.answer] + e.choices[e.answer + 1:]
        positions = Counter(e.answer for e in task.examples)
        assert min(positions[i] for i in range(4)) >= len(task.examples) / 8  # the answer moves around


def test_which_package_labels_are_the_files_packages_and_balanced(corpus):
    train, val = (load_task(corpus["made"]["a"]["which_package", s].spec) for s in ("train", "val"))
    assert train.spec.labels == val.spec.labels and len(train.spec.labels) == 4
    assert train.spec.template == "{text}\n# package:"
    assert train.verbalizers == {p: f" {p}" for p in train.spec.labels}
    for task in (train, val):
        funcs = by_id(corpus, [e.id.rsplit(":", 1)[0] for e in task.examples])
        for e in task.examples:
            assert e.label == e.id.split("/")[0]
            assert e.text == funcs[e.id].source[:SOURCE_CHARS] and e.text.startswith(("def ", "async def "))
        counts = Counter(e.label for e in task.examples)
        assert set(counts) == set(task.spec.labels) and len(set(counts.values())) == 1 and len(task.examples) >= 40


def test_builtin_tasks_need_python_functions(tmp_path):
    docs = write_examples(tmp_path / "prose.jsonl", [{"id": "a.txt", "text": "Just words, no code."}])
    with pytest.raises(DataError) as info:
        make_builtin_tasks(docs, tmp_path / "out", "val", 0, 10)
    assert str(info.value) == f"{docs}: docstring_to_name: needs 4 distinct function names, found 0"
    (tmp_path / "bad.jsonl").write_text('{"id": "a.py", "text": 3}\n')
    with pytest.raises(DataError) as info:
        make_builtin_tasks(tmp_path / "bad.jsonl", tmp_path / "out", "val", 0, 10)
    assert str(info.value) == f"{tmp_path / 'bad.jsonl'}:1: a document needs string fields 'id' and 'text'"
    assert not (tmp_path / "out").exists()


def test_a_builtin_spec_is_a_valid_task_spec(corpus):
    raw = yaml.safe_load(corpus["made"]["a"]["which_package", "val"].spec.read_text())
    assert TaskSpec.model_validate(raw).path == "which_package.val.jsonl"
    assert list(raw) == ["name", "kind", "path", "labels", "template", "verbalizers"]


NESTED = '''
import x
def top():
    def inner():
        pass
    return lambda: (yield)
class K:
    async def method(self):
        if True:
            def in_if(): ...
        try:
            def in_try(): ...
        except E:
            def in_except(): ...
        finally:
            def in_finally(): ...
    match v:
        case 1:
            def in_case(): ...
with open(p) as f:
    for i in r:
        def in_loop(): ...
    else:
        def in_else(): ...
'''


def test_functions_finds_every_def_ast_walk_finds(tmp_path):
    import ast
    import json

    from lmforge.evaluate.builtin_tasks import functions, read_functions

    walked = sorted((n.lineno, n.name) for n in ast.walk(ast.parse(NESTED))
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    assert [(f.line, f.name) for f in functions("a/b.py", NESTED)] == walked and len(walked) == 10
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "a/b.py", "text": NESTED}) + "\n")
    first = read_functions(docs)
    assert read_functions(docs) == first  # remembered for the file as it is
    docs.write_text(json.dumps({"id": "a/b.py", "text": "def other():\n    pass\n"}) + "\n")
    assert [f.name for f in read_functions(docs)] == ["other"]  # a changed file is read again
