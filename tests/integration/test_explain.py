"""``lmforge explain`` end to end on the debug run trained 10 steps: a text's attributions with their faithfulness,
attention, logit lens and anatomy as self-contained HTML, PNGs and JSON; a fine-tuned classifier's task examples
with permutation importance; bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from cli_errors import assert_error_line, snapshot
from conftest import run_cli
from lmforge.checkpoint.load import classifier_ids, load_model, pick
from lmforge.rundir import RunDir

pytestmark = pytest.mark.integration

TEXT = "def add(a, b):\n    return a + b\n\n\ndef scale(x, factor):\n    return"
FAST = ["--set", "explain.faithfulness.random_orders=2", "--set", "explain.faithfulness.points=8"]


@pytest.fixture(scope="module")
def explained(trained_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("explain") / "run"
    shutil.copytree(trained_base, root)
    code, out, err = run_cli("explain", "--run-dir", str(root), "--text", TEXT, *FAST)
    assert code == 0, err
    return root


def test_a_text_explained(explained):
    folder = explained / "explain"
    assert {p.name for p in folder.iterdir()} == {
        "text.html", "text.attention.png", "text.faithfulness.png", "index.html", "attributions.json",
        "summary.json", "anatomy.json", "anatomy.png"}
    for page in ("text.html", "index.html"):  # self-contained: no script, nothing fetched
        html = (folder / page).read_text()
        assert "<script" not in html and "http" not in html and "<img" in html
        assert all(src.startswith("data:image/png;base64,") for src in re.findall(r"src='([^']*)'", html))
    ex = json.loads((folder / "attributions.json").read_text())["examples"]["text"]
    loaded = load_model(pick(RunDir(explained)))
    ids = loaded.tokenizer.encode(TEXT, add_special_tokens=False).ids
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))[0]
    assert ex["target"]["kind"] == "next_token" and ex["target"]["scored"] == [int(logits[-1].argmax())]
    assert abs(ex["log_prob"] - float(logits[-1].log_softmax(-1).max())) < 1e-5
    assert set(ex["attributions"]) == {"integrated_gradients", "gradient_x_input", "occlusion"}
    ig = ex["attributions"]["integrated_gradients"]
    assert len(ig["scores"]) == len(ids) and abs(ig["delta"]) <= 0.01 * abs(ig["f_input"] - ig["f_baseline"])
    for f in ex["faithfulness"].values():
        assert f["thresholds"][-1] == len(ids) and len(f["deletion"]) == len(f["thresholds"]) <= 8
        assert abs(f["insertion"][-1] - f["full"]) < 1e-6  # every token kept: the text itself
    maps = np.array(ex["attention"]["maps"])  # (layers, heads, shown, shown): rows of the last positions
    assert maps.shape[:2] == (2, 4) and np.all(maps >= 0) and np.all(maps.sum(-1) <= 1 + 1e-6)
    lens = ex["logit_lens"]  # the last layer's top token at the last position: the model's prediction
    assert lens["layers"] == ["embeddings", "layer 0", "layer 1"] and lens["positions"][-1] == len(ids) - 1
    assert lens["top"][-1][-1][0][0] == repr(loaded.tokenizer.decode([int(logits[-1].argmax())]))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["examples"]["text"]["integrated_gradients"]["delta"] == ig["delta"]
    anatomy = json.loads((folder / "anatomy.json").read_text())
    assert sum(anatomy["parameters"].values()) == sum(p.numel() for p in loaded.model.parameters())
    assert set(summary["anatomy"]["alpha"]) == {m["name"] for m in anatomy["matrices"]}


def test_a_classifiers_task_examples_and_their_segments(trained_base, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained_base, root)
    code, _, err = run_cli("finetune", "--run-dir", str(root), "--set", "finetune.objective=classification",
                           "--set", "finetune.task=which_package", "--set", "finetune.max_steps=6",
                           "--set", "train.eval_every=6", "--set", "train.checkpoint_every=6")
    assert code == 0, err
    code, out, err = run_cli("explain", "--run-dir", str(root), "--checkpoint", "finetuned", "--task",
                             "which_package", "--examples", "1", "--method", "integrated_gradients", "--method",
                             "occlusion", "--set", "explain.permutation.examples=8", "--set",
                             "explain.permutation.repeats=2", "--set", "explain.anatomy=false", *FAST)
    assert code == 0, err
    folder = root / "explain"
    [ex] = json.loads((folder / "attributions.json").read_text())["examples"].values()
    classifier = load_model(root / "finetune" / "model.safetensors")
    assert ex["target"]["kind"] == "label" and ex["target"]["description"] in classifier.labels
    assert ex["target"]["suffix"] == [classifier.eos_id]  # the classified end-of-text stays
    ig = ex["attributions"]["integrated_gradients"]
    assert abs(ig["delta"]) <= 0.01 * abs(ig["f_input"] - ig["f_baseline"])
    permutation = json.loads((folder / "permutation.json").read_text())
    from lmforge.transfer.classify import builtin_classification  # the same test examples the task gives
    from lmforge.command import resolve
    cfg, _ = resolve(None, root, ())
    examples = builtin_classification(RunDir(root), "which_package", cfg.seed, cfg.eval.builtin_examples).examples[:8]
    correct = 0
    with torch.no_grad():
        for e in examples:
            ids = classifier_ids(classifier.tokenizer.encode(e.text, add_special_tokens=False).ids,
                                 classifier.eos_id, classifier.seq_len)
            correct += classifier.labels[int(classifier.model(torch.tensor([ids]))[0, -1].argmax())] == e.label
    assert permutation["baseline"] == correct / 8 and permutation["rows"] == 8
    assert np.array(permutation["importances"]).shape == (len(permutation["features"]), 2)
    assert (folder / "permutation.png").is_file() and "Permutation importance" in (folder / "index.html").read_text()
    # a table's columns: each row read as "name: value" lines; the code column carries the label, noise nothing
    table = tmp_path / "rows.csv"
    rows = [{"noise": i % 3, "code": e.text.splitlines()[0].replace('"', "'"), "package": e.label}
            for i, e in enumerate(examples)]
    table.write_text("noise,code,package\n" + "".join(f'{r["noise"]},"{r["code"]}",{r["package"]}\n' for r in rows))
    code, out, err = run_cli("explain", "--run-dir", str(root), "--checkpoint", "finetuned", "--text", "import os",
                             "--method", "occlusion", "--set", f"explain.permutation.table={{path: '{table}', label: "
                             "package}", "--set", "explain.permutation.repeats=2", "--set", "explain.anatomy=false",
                             *FAST)
    assert code == 0, err
    by_column = json.loads((folder / "permutation.json").read_text())
    assert by_column["features"] == ["noise", "code"] and by_column["rows"] == 8
    correct = 0
    with torch.no_grad():
        for r in rows:
            ids = classifier_ids(classifier.tokenizer.encode(f"noise: {r['noise']}\ncode: {r['code']}\n",
                                                             add_special_tokens=False).ids,
                                 classifier.eos_id, classifier.seq_len)
            correct += classifier.labels[int(classifier.model(torch.tensor([ids]))[0, -1].argmax())] == r["package"]
    assert by_column["baseline"] == correct / 8
    before = snapshot(root)
    code, _, err = run_cli("explain", "--run-dir", str(root), "--checkpoint", "finetuned", "--text", "import os",
                           "--target", "numpy")
    assert_error_line(code, err, f"error: explain.text: label 'numpy' is not one of the classifier's labels "
                                 f"{classifier.labels}")
    code, _, err = run_cli("explain", "--run-dir", str(root), "--checkpoint", "finetuned", "--text", "import os",
                           "--set", f"explain.permutation.table={{path: '{table}', label: noise}}")
    assert_error_line(code, err, f"error: explain.permutation.table: {table}: label '0' is not one of the "
                                 f"classifier's labels {classifier.labels}")
    code, _, err = run_cli("explain", "--run-dir", str(root), "--checkpoint", "finetuned", "--text", "import os",
                           "--set", f"explain.permutation.table={{path: '{table}', label: package, columns: [age]}}")
    assert_error_line(code, err, f"error: explain.permutation.table: {table} has no column 'age' (it has noise, "
                                 "code, package)")
    assert snapshot(root) == before


LONG = "x = 1 + 2 " * 40


@pytest.mark.parametrize("args, line", [
    (["--text", ""], "error: explain.text: the text is empty: nothing to explain"),
    (["--text", "def f", "--target", LONG], "error: explain.text: the text and the target 'x = 1 + 2 x = 1 + 2 "
                                             "x = 1 + 2 x = 1 + 2 '... are 3 + 280 tokens, longer than the model's "
                                             "context of 128 tokens"),
    (["--text", LONG * 2], "error: explain.text: the text is 560 tokens, longer than the model's context of 128 "
                           "tokens"),
    (["--text", "def f", "--set", "explain.layer=layers.2"],
     "error: explain.layer: unknown layer 'layers.2': embeddings, or layers.<i> with i below 2"),
    (["--text", "def f", "--method", "saliency"], "error: explain.methods.0: Input should be 'integrated_gradients', "
                                                 "'gradient_x_input', 'occlusion' or 'shapley'"),
    ([], "error: explain: nothing to explain: give --text TEXT or --task NAME (explain.text, explain.task)"),
    (["--task", "nosuch"], "error: explain.task: 'nosuch' is neither a built-in task (docstring_to_name, "
                           "which_package) nor a task YAML"),
    (["--task", "which_package", "--target", "x"], "error: explain.target: a task's examples are explained toward "
                                                    "their gold answers; give --target with --text only"),
    (["--text", "def f", "--set", "explain.baseline=99999"], "error: explain.baseline: 99999 is not a token of the "
                                                             "model's vocabulary of 512"),
], ids=["empty", "target-too-long", "text-too-long", "layer", "method", "nothing", "task", "task-target", "baseline"])
def test_bad_input_is_one_line_and_writes_nothing(explained, args, line):
    before = snapshot(explained)
    code, _, err = run_cli("explain", "--run-dir", str(explained), *args)
    assert_error_line(code, err, line)
    assert snapshot(explained) == before  # the earlier explanation is untouched
