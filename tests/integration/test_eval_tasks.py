"""The eval stage end to end on one small trained debug run (shared by every test here): user tasks of every
kind and format beside the built-in ones, every figure with its interval, predictions and plots, checkpoint
selection that training never deletes, the paired comparison, evaluation during training, and bad task
input refused in one line with nothing written."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_errors import assert_error_line, snapshot

from conftest import run_cli
from lmforge.checkpoint.load import pick
from lmforge.core.metrics import read_metrics
from lmforge.rundir import RunDir

pytestmark = pytest.mark.integration

MC = [{"id": f"m{i}", "context": c, "choices": ch, "answer": a} for i, (c, ch, a) in enumerate([
    ("import os; import", [" sys", " the", " (("], 0), ("def __init__(self", [", x):", " return", "]]"], 0),
    ("for i in", [" range(n):", " class", " ::"], 0), ("return", [" None", " def", " import"], 0),
    ("if x is", [" None:", " while", " @@"], 0), ("class Foo(", ["object):", "return", "+++"], 0),
] * 3)]
for i, r in enumerate(MC):
    r["id"] = f"m{i}"
CLS = [{"id": i, "text": t, "label": lab} for i, (t, lab) in enumerate([
    ("def f(x):\n    return x", "function"), ("class A:\n    pass", "class"), ("def g():\n    pass", "function"),
    ("class B(A):\n    x = 1", "class"), ("def h(a, b):\n    return a + b", "function"),
    ("class C:\n    def m(self): pass", "class")] * 3)]
GEN = [{"id": i, "prompt": p, "answer": a} for i, (p, a) in enumerate([("import", " os"), ("def", " f"), ("return", " x")])]
DOCS = [{"id": i, "text": t} for i, t in enumerate(["def f(x):\n    return x + 1\n" * 5, "import os\nimport sys\n" * 8])]


def write_tasks(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mc.csv", "w", newline="") as f:  # CSV: the choices cell is a JSON list
        w = csv.DictWriter(f, fieldnames=["id", "context", "choices", "answer"])
        w.writeheader()
        w.writerows({**r, "choices": json.dumps(r["choices"])} for r in MC)
    pq.write_table(pa.Table.from_pylist([{**r, "id": str(r["id"])} for r in CLS]), folder / "cls.parquet")
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GEN))
    (folder / "ppl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOCS))
    specs = {"mc": {"kind": "multiple_choice", "path": "mc.csv"},
             "cls": {"kind": "classification", "path": "cls.parquet", "labels": ["function", "class"],
                     "template": "{text}\n# kind:", "verbalizers": {"function": " function", "class": " class"}},
             "gen": {"kind": "generation", "path": "gen.jsonl", "max_new_tokens": 4},
             "ppl": {"kind": "perplexity", "path": "ppl.jsonl"}}
    paths = []
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(json.dumps({"name": name, **spec}))
        paths.append(folder / f"{name}.yaml")
    return paths


def task_list(paths) -> str:
    return "eval.tasks=[" + ", ".join(["builtin", *map(str, paths)]) + "]"


@pytest.fixture(scope="session")
def trained_run(debug_data_run, tmp_path_factory) -> Path:
    """The debug run trained 20 steps, checkpoints at 10 and 20 kept."""
    root = tmp_path_factory.mktemp("evaltasks") / "run"
    shutil.copytree(debug_data_run, root)
    code, _, err = run_cli("train", "--run-dir", str(root), "--set", "train.keep_checkpoints=3")
    assert code == 0, err
    return root


@pytest.fixture(scope="session")
def evaluated(trained_run, tmp_path_factory) -> tuple[Path, list[Path]]:
    """``trained_run`` evaluated on the user tasks and the built-in ones, selecting by val_loss (max: the
    worse checkpoint, so that the selected one is not the latest), compared with the step-10 checkpoint."""
    root = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(trained_run, root)
    paths = write_tasks(root.parent / "tasks")
    code, out, err = run_cli("eval", "--run-dir", str(root), "--set", task_list(paths),
                             "--set", "eval.select={metric: val_loss, mode: max}",
                             "--compare", str(root / "train" / "checkpoints" / "step_00000020"))
    assert code == 0, err
    return root, paths


def test_every_task_has_its_metrics_with_intervals_predictions_and_plots(evaluated):
    root, _ = evaluated
    results = json.loads((root / "eval" / "results.json").read_text())
    assert set(results["tasks"]) >= {"mc", "cls", "gen", "ppl"}
    assert set(results["tasks"]) & {"docstring_to_name", "which_package"}  # the built-in ones, where they fit
    for name, task in results["tasks"].items():
        for metric, m in task["metrics"].items():
            assert m["low"] <= m["estimate"] + 1e-12 and m["estimate"] <= m["high"] + 1e-12, (name, metric)
        lines = (root / "eval" / name / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == task["examples"]
    mc, cls = results["tasks"]["mc"], results["tasks"]["cls"]
    predictions = [json.loads(x) for x in (root / "eval" / "mc" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in MC]
    assert mc["metrics"]["acc"]["estimate"] == np.mean([p["prediction"] == p["gold"] for p in predictions])
    assert {"f1_macro", "precision/function", "recall/class", "ece", "brier", "nll"} <= set(cls["metrics"])
    assert np.array(cls["confusion"]["matrix"]).sum() == len(CLS)
    assert (root / "eval" / "cls" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "eval" / "mc" / "reliability.png").exists()
    cal = mc["calibration"]
    assert cal["accuracy_before"] == cal["accuracy_after"] and cal["fit_examples"] == 9
    assert "exact_match" in results["tasks"]["gen"]["metrics"]
    assert results["tasks"]["ppl"]["metrics"]["perplexity"]["estimate"] > 1
    after = results["after"]
    assert after["intervals"]["loss"][0] <= after["loss"] <= after["intervals"]["loss"][1]
    summary = (root / "eval" / "summary.md").read_text()
    assert "## mc (multiple choice, 18 examples)" in summary and "## Checkpoint selection" in summary
    stage = json.loads((root / "eval" / "summary.json").read_text())
    assert stage["tasks"]["mc"]["acc"] == mc["metrics"]["acc"]


def test_selection_is_the_later_stages_default_and_training_keeps_it(evaluated, tmp_path):
    root, _ = evaluated
    selection = json.loads((root / "eval" / "selection.json").read_text())
    assert [c["step"] for c in selection["checkpoints"]] == [10, 20]
    worst = max(selection["checkpoints"], key=lambda c: c["estimate"])
    assert selection["chosen"]["step"] == worst["step"] == 10 and selection["mode"] == "max"
    assert selection["lead"]["runner_up"]["step"] == 20 and isinstance(selection["lead"]["significant"], bool)
    run = RunDir(root)
    assert pick(run) == root / "train" / "checkpoints" / "step_00000010"
    assert pick(run, "latest").name == "step_00000020"
    code, out, err = run_cli("generate", "--run-dir", str(root), "--prompt", "def", "--max-new-tokens", "4")
    assert code == 0, err

    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    code, _, err = run_cli("train", "--run-dir", str(copy), "--resume", "--set", "train.max_steps=40",
                           "--set", "train.keep_checkpoints=1")
    assert code == 0, err
    kept = [p.name for _, p in RunDir(copy).list_checkpoints()]
    assert kept == ["step_00000010", "step_00000040"]  # keep-last-1, and the selected one


def test_paired_comparison(evaluated):
    root, _ = evaluated
    compare = json.loads((root / "eval" / "compare.json").read_text())
    assert compare["other"].endswith("step_00000020")
    val = compare["tasks"]["validation"]["metrics"]["val_loss"]
    assert val["difference"] == pytest.approx(val["a"] - val["b"]) and val["low"] <= val["difference"] <= val["high"]
    mc = compare["tasks"]["mc"]
    assert {"a_only_correct", "b_only_correct", "p_value"} <= set(mc["mcnemar"]["acc"])
    assert 0 <= mc["mcnemar"]["acc"]["p_value"] <= 1
    results = json.loads((root / "eval" / "results.json").read_text())
    assert mc["metrics"]["acc"]["a"] == results["tasks"]["mc"]["metrics"]["acc"]["estimate"]


def test_eval_tasks_during_training(trained_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained_run, root)
    (mc,) = [p for p in write_tasks(tmp_path / "tasks") if p.stem == "mc"]
    code, _, err = run_cli("train", "--run-dir", str(root), "--redo", "--set", "train.max_steps=10",
                           "--set", f"train.eval_tasks=[{mc}]")
    assert code == 0, err
    evals = [r for r in read_metrics(root / "train" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10]
    assert all(0 <= r["mc/acc"] <= 1 and "mc/ece" in r for r in evals)


BAD = [
    ("mc.csv", lambda rows: rows[2].pop("context"), "{d}/mc.csv:4: missing field 'context'"),
    ("mc.csv", lambda rows: rows[0].update(choices="[]"), "{d}/mc.csv:2: field 'choices' is empty"),
    ("mc.csv", lambda rows: rows[1].update(answer="7"), "{d}/mc.csv:3: answer 7 is out of range for 3 choices"),
    ("mc.csv", lambda rows: rows[3].update(id="m0"), "{d}/mc.csv:5: duplicate id 'm0' (first at line 2)"),
    ("cls.jsonl", lambda rows: rows[1].update(label="module"),
     "{d}/cls.jsonl:2: label 'module' is not one of the labels (function, class)"),
]


@pytest.mark.parametrize("file, spoil, message", BAD)
def test_bad_task_input_is_one_line_and_writes_nothing(trained_run, tmp_path, file, spoil, message):
    d = tmp_path / "tasks"
    paths = write_tasks(d)
    if file == "mc.csv":
        with open(d / "mc.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        spoil(rows)
        with open(d / "mc.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "context", "choices", "answer"])
            w.writeheader()
            w.writerows(rows)
        paths = [d / "mc.yaml"]
    else:
        rows = [dict(r) for r in CLS]
        spoil(rows)
        (d / "cls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = json.loads((d / "cls.yaml").read_text())
        (d / "cls.yaml").write_text(json.dumps({**spec, "path": "cls.jsonl"}))
        paths = [d / "cls.yaml"]
    before = snapshot(trained_run)
    code, _, err = run_cli("eval", "--run-dir", str(trained_run), "--set", task_list(paths))
    assert_error_line(code, err, "error: " + message.format(d=d))
    assert snapshot(trained_run) == before


def test_too_long_example_and_unknown_select_metric(trained_run, tmp_path):
    d = tmp_path / "tasks"
    write_tasks(d)
    long = MC[:3] + [{"id": "long", "context": "import os\n" * 200, "choices": [" a", " b"], "answer": 0}]
    (d / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))
    (d / "long.yaml").write_text(json.dumps({"name": "long", "kind": "multiple_choice", "path": "long.jsonl"}))
    before = snapshot(trained_run)
    code, _, err = run_cli("eval", "--run-dir", str(trained_run), "--set", f"eval.tasks=[{d / 'long.yaml'}]")
    assert code == 2 and err.startswith(f"error: {d}/long.jsonl:4: example 'long' is "), err
    assert "longer than the model's context of 128 tokens" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("eval", "--run-dir", str(trained_run), "--set", f"eval.tasks=[{d / 'mc.yaml'}]",
                           "--set", "eval.select={metric: mc/f1}")
    assert_error_line(code, err, "error: eval.select.metric: 'mc/f1': unknown metric 'f1' of task 'mc' (known: acc, "
                                 "acc_norm, ece, mce, brier, nll)")
    code, _, err = run_cli("eval", "--run-dir", str(trained_run), "--set", "eval.select={metric: nope/acc}")
    assert_error_line(code, err, "error: eval.select.metric: 'nope/acc': no task 'nope' in eval.tasks (tasks: "
                                 "docstring_to_name, which_package; or val_loss)")
    assert snapshot(trained_run) == before


def test_bad_compare_target_and_bad_train_eval_task_are_one_line(trained_run, tmp_path):
    before = snapshot(trained_run)
    missing = tmp_path / "nowhere"
    code, _, err = run_cli("eval", "--run-dir", str(trained_run), "--compare", str(missing))
    assert_error_line(code, err, f"error: checkpoint {missing}: no such checkpoint folder or file "
                                 "(or give latest, best, selected, finetuned, merged)")
    code, _, err = run_cli("train", "--run-dir", str(trained_run), "--resume", "--set", "train.max_steps=30",
                           "--set", f"train.eval_tasks=[{missing}.yaml]")
    assert_error_line(code, err, f"error: {missing}.yaml: no such task file")
    assert snapshot(trained_run) == before
