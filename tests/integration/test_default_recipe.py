"""The built-in default recipe's data and model through `lmforge run --only eval --only sample` (curate to
sample) at reduced training steps; test_whole_life runs every stage of it at debug size."""

import json

import pytest

from conftest import lmforge_run

pytestmark = pytest.mark.integration


def test_default_recipe_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "default"
    result = lmforge_run("run", "--run-dir", str(run_dir), "--only", "eval", "--only", "sample", "--set", "train.max_steps=4",
                         "--set", "train.eval_every=2", "--set", "eval.max_tokens=16384", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    stats = json.loads((run_dir / "curate" / "stats.json").read_text())
    assert summary["documents_read"] == stats["documents_read"] > 500  # the whole standard library
    assert 4_000_000 < summary["parameters"] < 7_000_000  # the `tiny` model
    assert summary["steps"] == 4 and summary["tokens_per_s"] > 0
    assert summary["after"]["loss"] < summary["before"]["loss"]
    samples = json.loads((run_dir / "sample" / "samples.json").read_text())["samples"]
    assert len(samples) == 2 and all(s["prompt"] == "def " for s in samples)
    assert "run directory" in result.stdout and str(run_dir) in result.stdout
