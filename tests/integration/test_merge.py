"""``lmforge merge`` end to end on the debug recipe: two fine-tunes of one base merged by TIES and by a greedy
soup, evaluated against their inputs, the base and their ensemble, the merge loadable as ``--checkpoint merged``;
bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from cli_errors import assert_error_line, snapshot
from conftest import run_cli

pytestmark = pytest.mark.integration

QUICK = ["--set", "eval.tasks=[]", "--set", "eval.max_tokens=2048"]


@pytest.fixture(scope="module")
def tuned(trained_base, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The base run with two fine-tunes of its latest checkpoint (different learning rates), exported files."""
    root = tmp_path_factory.mktemp("merge") / "run"
    shutil.copytree(trained_base, root)
    made = []
    for i, lr in enumerate(("1e-3", "4e-3")):
        code, _, err = run_cli("finetune", "--run-dir", str(root), "--redo", "--set", "finetune.max_steps=8",
                               "--set", f"finetune.lr={lr}", "--set", f"seed={7 + i}")
        assert code == 0, err
        made.append(root / f"tuned_{i}.safetensors")
        shutil.copyfile(root / "finetune" / "model.safetensors", made[-1])
    shutil.rmtree(root / "finetune")
    return root, made[0], made[1]


def copy_of(tuned, tmp_path: Path) -> tuple[Path, Path, Path]:
    root, a, b = tuned
    shutil.copytree(root, tmp_path / "run")
    return tmp_path / "run", tmp_path / "run" / a.name, tmp_path / "run" / b.name


def test_ties_merge_is_evaluated_against_its_ingredients_and_loads_as_merged(tuned, tmp_path):
    root, a, b = copy_of(tuned, tmp_path)
    code, out, err = run_cli("merge", "--run-dir", str(root), "--input", str(a), "--input", str(b), "--method", "ties",
                             "--set", "merge.base=latest", "--set", "merge.density=0.5",
                             "--set", "eval.tasks=[builtin]", "--set", "eval.max_tokens=2048")
    assert code == 0, err
    summary = json.loads((root / "merge" / "summary.json").read_text())
    assert summary["method"] == "ties" and summary["output"] == "merge/model.safetensors"
    models = summary["evaluation"]["models"]
    assert set(models) == {"merged", "input 0", "input 1", "base", "ensemble", "vote"}
    for name in ("merged", "input 0", "input 1", "base", "ensemble"):
        val = models[name]["val"]
        assert val["intervals"]["loss"][0] <= val["loss"] <= val["intervals"]["loss"][1]
        assert set(models[name]["tasks"]) == {"docstring_to_name", "which_package"}
    assert models["base"]["val"]["loss"] > min(models["input 0"]["val"]["loss"], models["input 1"]["val"]["loss"])
    verdict = summary["evaluation"]["verdict"]
    assert set(verdict) == {"val_loss", "docstring_to_name/acc", "which_package/acc"}
    assert verdict["val_loss"] == (models["merged"]["val"]["loss"] < min(
        models[n]["val"]["loss"] for n in ("input 0", "input 1", "base")))
    md = (root / "merge" / "summary.md").read_text()
    assert "| merged |" in md and "| ensemble |" in md and "Did the merge beat" in md
    code, out, err = run_cli("generate", "--run-dir", str(root), "--checkpoint", "merged", "--json")
    assert code == 0, err
    code, _, err = run_cli("export", "--run-dir", str(root), "--checkpoint", "merged", "--format", "hf")
    assert code == 0 and (root / "merge" / "model-hf" / "config.json").is_file(), err


def test_greedy_soup_adds_ingredients_in_order_of_their_held_out_loss(tuned, tmp_path):
    root, a, b = copy_of(tuned, tmp_path)
    base = root / "train" / "checkpoints" / "step_00000010"
    code, _, err = run_cli("merge", "--run-dir", str(root), "--input", str(base), "--input", str(a), "--input", str(b),
                           "--method", "greedy_soup", *QUICK)
    assert code == 0, err
    summary = json.loads((root / "merge" / "summary.json").read_text())
    soup, models = summary["soup"], summary["evaluation"]["models"]
    losses = {i: models[f"input {i}"]["val"]["loss"] for i in range(3)}
    assert [s["input"] for s in soup] == sorted(losses, key=losses.get)  # best first
    assert soup[0]["kept"] and abs(soup[0]["loss"] - min(losses.values())) < 1e-9
    kept = [s["loss"] for s in soup if s["kept"]]
    assert kept == sorted(kept, reverse=True)  # each kept ingredient did not make the soup worse
    assert models["merged"]["val"]["loss"] <= min(losses.values()) + 1e-6


def other_tokenizer_model(tuned_file: Path, folder: Path) -> Path:
    """The same weights in a folder whose run tokenizer is another one."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "checkpoint"))
    from hf_models import make_tokenizer

    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "tokenizer.json").write_text(make_tokenizer(512).to_str())
    shutil.copyfile(tuned_file, folder / "model.safetensors")
    return folder / "model.safetensors"


@pytest.mark.parametrize("case", ["one", "dims", "tokenizer", "density", "weights", "checkpoint_weights", "slerp",
                                  "no_base"])
def test_bad_merge_input_is_one_line_and_writes_nothing(tuned, tmp_path, case):
    root, a, b = copy_of(tuned, tmp_path)
    args = ["--input", str(a), "--input", str(b)]
    if case == "one":
        args, line = ["--input", str(a)], "error: merge.inputs: give two or more models to merge (got 1)"
    elif case == "dims":
        sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "checkpoint"))
        from hf_models import lmforge_dims, lmforge_run

        other, _ = lmforge_run(tmp_path / "other", lmforge_dims(True, 4, 2, 2, 512))
        args = ["--input", str(a), "--input", str(other)]
        line = (f"error: merge.inputs[1] {other.absolute()}: model.ffn_hidden=40, but merge.inputs[0] {a.absolute()} "
                "has 172")
    elif case == "tokenizer":
        other = other_tokenizer_model(a, tmp_path / "elsewhere")
        args = ["--input", str(a), "--input", str(other)]
        line = f"error: merge.inputs[1] {other.absolute()}: another tokenizer than merge.inputs[0]'s"
    elif case == "density":
        args += ["--method", "ties", "--set", "merge.density=0"]
        line = f"error: recipe {root}/recipe.yaml: merge.density: Input should be greater than 0 (got 0)"
    elif case == "weights":
        args += ["--set", "merge.weights=[1, 2, 3]"]
        line = (f"error: recipe {root}/recipe.yaml: merge: weights has 3 value(s) for 2 input(s)")
    elif case == "checkpoint_weights":  # `checkpoints` is every kept checkpoint: one here (step 10)
        args = ["--input", "checkpoints", "--input", str(a), "--set", "merge.weights=[1, 2, 3]"]
        line = "error: merge.weights: 3 value(s) for 2 input(s)"
    elif case == "slerp":
        args += ["--input", str(a), "--method", "slerp"]
        line = f"error: recipe {root}/recipe.yaml: merge: slerp merges exactly two models, got 3 inputs"
    else:
        args += ["--method", "dare_ties"]
        line = "error: merge.method=dare_ties needs merge.base (the model the deltas are taken from)"
    before = snapshot(root)
    code, _, err = run_cli("merge", "--run-dir", str(root), *args, *QUICK)
    if case == "tokenizer":
        assert code == 2 and err.strip().startswith(line), err
    else:
        assert_error_line(code, err, line)
    assert snapshot(root) == before


def test_generate_with_an_ensemble(tuned, tmp_path):
    root, a, b = copy_of(tuned, tmp_path)

    def greedy(*args):
        code, out, err = run_cli("generate", "--run-dir", str(root), "--temperature", "0", "--json",
                                 "--max-new-tokens", "12", *args)
        assert code == 0, err
        return json.loads(out)["samples"][0]["completion"]

    alone = greedy("--checkpoint", str(a))
    assert greedy("--checkpoint", str(a), "--ensemble", str(a)) == alone  # a model with itself is the model
    assert greedy("--checkpoint", str(a), "--ensemble", str(b), "--ensemble-mode", "log_probabilities")
    other = other_tokenizer_model(b, tmp_path / "elsewhere")
    before = snapshot(root)
    code, _, err = run_cli("generate", "--run-dir", str(root), "--checkpoint", str(a), "--ensemble", str(other))
    assert_error_line(code, err, f"error: --ensemble {other}: another tokenizer than the model's {a} (an ensemble "
                                 "combines next-token distributions over one vocabulary)")
    assert snapshot(root) == before
