"""``lmforge compress`` end to end on the debug recipe: magnitude, Wanda, 2:4 and structured variants written as
exported files that eval loads, the table (md, json, png) with every column and ratio; bad input refused in one
line with nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cli_errors import assert_error_line, snapshot
from conftest import run_cli
from lmforge.checkpoint.load import load_model
from lmforge.compress.calibration import block_linears

pytestmark = pytest.mark.integration

VARIANTS = ("compress.variants=[{name: mag50, method: magnitude, sparsity: 0.5}, {name: wanda50, method: wanda, "
            "sparsity: 0.5, recovery_steps: 3}, {name: two_four, method: two_four}, {name: mlp25, method: structured, mlp_fraction: 0.25, head_fraction: 0.5, recovery_steps: 4}, "
            "{name: q8, method: int8}]")
FAST = ["--set", "compress.measure.repeats=2", "--set", "compress.measure.new_tokens=8", "--set",
        "eval.max_tokens=2048", "--set", "compress.measure.memory=false"]


def test_variants_and_their_table(trained_base, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained_base, root)
    code, out, err = run_cli("compress", "--run-dir", str(root), "--set", VARIANTS, "--set", "eval.tasks=[builtin]",
                             *FAST)
    assert code == 0, err
    rows = json.loads((root / "compress" / "table.json").read_text())
    assert set(rows) == {"dense", "mag50", "wanda50", "wanda50-recovered", "two_four", "mlp25", "mlp25-recovered", "q8"}
    recovered = rows["mlp25-recovered"]  # trained 4 steps from the pruned model: the same size, other weights
    assert recovered["parameters"] == rows["mlp25"]["parameters"] and recovered["val_loss"] != rows["mlp25"]["val_loss"]
    for name, row in rows.items():
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0 and row["perplexity"] > 1
        assert set(row["tasks"]) == {"docstring_to_name/acc", "which_package/acc"}
        assert row["ratio_to_dense"]["parameters"] == row["parameters"] / rows["dense"]["parameters"]
    for name in ("mag50", "wanda50", "two_four", "wanda50-recovered"):
        model = load_model(root / rows[name]["path"]).model
        for layer_name, layer in block_linears(model).items():
            assert int((layer.weight == 0).sum()) == layer.weight.numel() // 2, (name, layer_name)
        assert rows[name]["parameters"] == rows["dense"]["parameters"] > rows[name]["nonzero_parameters"]
    pruned, recovered = (load_model(root / rows[n]["path"]).model for n in ("wanda50", "wanda50-recovered"))
    for (layer_name, a), b in zip(block_linears(pruned).items(), block_linears(recovered).values()):
        assert torch.equal(a.weight == 0, b.weight == 0), layer_name  # the same zeros, other kept weights
    assert rows["wanda50-recovered"]["val_loss"] != rows["wanda50"]["val_loss"]
    small = load_model(root / rows["mlp25"]["path"]).model
    assert small.dims.ffn_hidden == 129 and rows["mlp25"]["parameters"] < rows["dense"]["parameters"]
    assert (small.dims.n_heads, small.dims.n_kv_heads, small.dims.head_dim) == (2, 2, 16)  # one of each group's two
    assert all((root / "compress" / f).is_file() for f in ("table.md", "table.png", "summary.json"))
    q8 = rows["q8"]  # int8: the same parameters in about a quarter of the bytes (the embeddings stay fp32)
    assert q8["parameters"] == rows["dense"]["parameters"] and q8["weight_bytes"] < 0.5 * rows["dense"]["weight_bytes"]
    assert abs(q8["perplexity"] / rows["dense"]["perplexity"] - 1) < 0.01
    code, out, err = run_cli("eval", "--run-dir", str(root), "--checkpoint", str(root / rows["mlp25"]["path"]),
                             "--set", "eval.tasks=[]", "--set", "eval.max_tokens=2048")
    assert code == 0, err
    after = json.loads((root / "eval" / "results.json").read_text())["after"]["loss"]
    assert abs(after - rows["mlp25"]["val_loss"]) < 1e-6  # the table scores what eval loads


def test_peak_memory_is_measured_in_a_fresh_process_per_model(trained_base, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained_base, root)
    code, _, err = run_cli("compress", "--run-dir", str(root), "--set", "compress.variants=[{name: q8, method: int8}]",
                           "--set", "eval.tasks=[]", *FAST, "--set", "compress.measure.memory=true")
    assert code == 0, err
    rows = json.loads((root / "compress" / "table.json").read_text())
    assert all(row["peak_memory_mb"] >= 0 for row in rows.values())
    assert "| peak MB |" in (root / "compress" / "table.md").read_text()


def test_distillation_beside_its_cross_entropy_control(trained_base, tmp_path):
    from lmforge.core.metrics import read_metrics

    root = tmp_path / "run"
    shutil.copytree(trained_base, root)
    code, out, err = run_cli("compress", "--run-dir", str(root), "--set",
                             "compress.variants=[{name: kd, method: distill, max_steps: 6, alpha: 0.7}]",
                             "--set", "train.eval_every=3", "--set", "eval.tasks=[]", *FAST)
    assert code == 0, err
    rows = json.loads((root / "compress" / "table.json").read_text())
    assert rows["kd"]["method"] == "distill" and rows["kd-ce"]["method"] == "ce-control"
    assert rows["kd"]["parameters"] == rows["kd-ce"]["parameters"] < rows["dense"]["parameters"]
    evals = {name: [(r["step"], r["val_loss"]) for r in read_metrics(root / "compress" / name / "train" / "metrics.jsonl")
                    if r["kind"] == "eval"] for name in ("kd", "kd-ce")}
    assert evals["kd"][0] == evals["kd-ce"][0] and [s for s, _ in evals["kd"]] == [0, 3, 6]  # the same start
    assert evals["kd"][-1] != evals["kd-ce"][-1]
    assert "gap_closed" in json.loads((root / "compress" / "summary.json").read_text())["variants"]["kd"]


@pytest.mark.parametrize("variants, line", [
    ("[{name: kd, method: distill, student: {d_model: 128}}]",
     "error: compress.variants[0] (kd): the student (296,576 parameters) is not smaller than the teacher (123,712)"),
    ("[{name: a, method: magnitude, sparsity: 1.0}]",
     "error: recipe RUN/recipe.yaml: compress.variants.0.magnitude.sparsity: Input should be less than 1 (got 1.0)"),
    ("[{name: a, method: wanda, sparsity: 0}]",
     "error: recipe RUN/recipe.yaml: compress.variants.0.wanda.sparsity: Input should be greater than 0 (got 0)"),
    ("[{name: a, method: magnitude, sparsity: 0.5}, {name: a, method: wanda, sparsity: 0.5}]",
     "error: compress.variants: the name 'a' is used twice"),
    ("[{name: q4, method: int4, group_size: 32}]",
     "error: compress.variants[0] (q4): group size 32 does not divide the input dimension 172 (ffn_hidden (down input))"),
    ("[{name: q4, method: int4, group_size: 48}]",
     "error: recipe RUN/recipe.yaml: compress.variants.0.int4.group_size: Input should be 32, 64, 128 or 256 (got 48)"),
    ("[{name: a, method: magnitude, sparsity: 0.5, recovery_steps: -1}]",
     "error: recipe RUN/recipe.yaml: compress.variants.0.magnitude.recovery_steps: Input should be greater than or "
     "equal to 0 (got -1)"),
    ("[{name: s, method: structured, head_fraction: 0.2}]",
     "error: compress.variants[0] (s): head_fraction 0.2 removes no query head of a group of 2"),
    ("[{name: s, method: structured}]",
     "error: recipe RUN/recipe.yaml: compress.variants.0.structured: set mlp_fraction and / or "
     "head_fraction: the share of MLP channels / attention heads to remove"),
    ("[]", "error: compress.variants: no variant to make (e.g. [{name: wanda50, method: wanda, sparsity: 0.5}])"),
])
def test_bad_variants_are_one_line_and_write_nothing(trained_base, tmp_path, variants, line):
    root = tmp_path / "run"
    shutil.copytree(trained_base, root)
    before = snapshot(root)
    code, _, err = run_cli("compress", "--run-dir", str(root), "--set", f"compress.variants={variants}")
    assert_error_line(code, err, line.replace("RUN", str(root)))
    assert snapshot(root) == before
