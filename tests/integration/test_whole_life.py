"""The whole default recipe through ``lmforge run`` at reduced steps: every stage's output, the run summary's line
per stage, the report, a rerun that skips everything done, a changed later stage that reruns alone, and stage
choices (``--only``, ``--skip``) refused in one line when they name no stage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_errors import assert_error_line
from conftest import lmforge_run, run_cli

pytestmark = pytest.mark.integration

# the default recipe at debug size: every stage, a few steps each
REDUCED = ["data.max_documents=120", "data.val_fraction=0.1", "data.max_chars=50000", "tokenizer.vocab_size=512",
           "model.size=debug", "train.max_steps=20", "train.seq_len=64", "train.eval_every=10",
           "train.checkpoint_every=10", "train.eval_batches=2", "eval.max_tokens=8192", "eval.builtin_examples=24",
           "generate.max_new_tokens=16", "generate.num_samples=1", "finetune.max_steps=4",
           "compress.variants.2.max_steps=4", "compress.measure.repeats=1", "compress.measure.new_tokens=4",
           "explain.examples=1", "explain.faithfulness.random_orders=1", "explain.faithfulness.points=4",
           "attack.examples=2", "attack.attacks=[{name: fgsm}, {name: hotflip, neighbours: 4}]",
           "attack.harden.steps=1"]
SETS = [arg for value in REDUCED for arg in ("--set", value)]
LATER = ("finetune", "merge", "compress", "explain", "attack", "secure", "report")
ALL = ("curate", "tokenizer", "pack", "train", "eval", "sample", *LATER)


def run_default(run_dir: Path, *extra: str, cwd: Path):
    return lmforge_run("run", "--run-dir", str(run_dir), *SETS, *extra, cwd=cwd)


@pytest.fixture(scope="module")
def whole_life(tmp_path_factory):
    """The reduced default run (made once for this module) and what ``lmforge run`` printed."""
    root = tmp_path_factory.mktemp("whole_life")
    result = run_default(root / "run", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", result


def test_every_stage_runs_and_leaves_its_outputs(whole_life):
    run, result = whole_life
    stages = json.loads((run / "stages.json").read_text())
    assert set(stages) == set(ALL) and all(stages[n]["seconds"] >= 0 for n in ALL)
    for name in ALL:
        assert (run / name / "summary.json").is_file(), name
    for rel in ["finetune/model.safetensors", "finetune/test/confusion.png", "merge/model.safetensors",
                "merge/summary.md", "compress/table.md", "compress/int8/model.safetensors",
                "compress/wanda50/model.safetensors", "compress/student/model.safetensors", "explain/index.html",
                "attack/report.md", "harden/model.safetensors", "secure/model.safetensors.enc", "report.html"]:
        assert (run / rel).exists(), rel
    summary = lambda name: json.loads((run / name / "summary.json").read_text())  # noqa: E731
    assert summary("finetune")["objective"] == "classification" and summary("finetune")["mode"] == "lora"
    merge = summary("merge")
    assert merge["method"] == "greedy_soup" and len(merge["inputs"]) == 2  # the checkpoints of steps 10 and 20
    assert [Path(p).name for p in merge["inputs"]] == ["step_00000010", "step_00000020"]
    assert merge["soup"][0]["kept"] and set(merge["evaluation"]["models"]) >= {"merged", "input 0", "input 1"}
    assert set(summary("compress")["variants"]) >= {"dense", "int8", "wanda50", "student"}
    assert len(summary("explain")["examples"]) == 1
    attack = summary("attack")
    models = attack["models"]
    assert [m["adversarial"] is not None for m in models] == [False, True]  # before and after adversarial training
    assert models[1]["model"].endswith("harden/model.safetensors") and attack["harden"]["steps"] == 4
    secure = summary("secure")
    assert secure["verified"] is True and secure["encrypted"] and secure["signature"]
    private = run / secure["private_key"]
    assert private.is_file() and (private.stat().st_mode & 0o777) == 0o600
    assert "the private keys are kept in the run directory: secure/keys/ (move them)" in result.stdout


def test_the_summary_has_one_line_per_stage_and_the_report_every_section(whole_life):
    run, result = whole_life
    stages = json.loads((run / "summary.json").read_text())["stages"]
    lines = {entry["stage"]: entry["headline"] for entry in stages}
    assert tuple(entry["stage"] for entry in stages) == ALL and "not run" not in lines.values()
    for name in ALL:
        assert any(line.strip("│ ").startswith(name) for line in result.stdout.splitlines()), name
    assert "greedy_soup of 2 models" in lines["merge"] and "hardened: clean accuracy" in lines["attack"]
    assert lines["secure"].startswith("signed and encrypted; verified")
    page = (run / "report.html").read_text()
    for title in ["Fine-tuning", "Merging", "Compression", "Attributions and anatomy", "Robustness",
                  "Signature and encryption", "Greedy soup", "Adversarial fine-tuning (attack.harden)"]:
        assert title in page, title
    assert "Not run:" not in page


def test_a_rerun_skips_every_finished_stage_and_a_changed_later_stage_reruns_alone(whole_life, tmp_path):
    run, _ = whole_life
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {name: os.stat(copy / name / "summary.json").st_mtime_ns for name in ALL}
    again = run_default(copy, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ALL[:-1]:
        assert f"{name}: already done, skipped" in again.stderr, name
    assert os.stat(copy / "report" / "summary.json").st_mtime_ns > before["report"]  # the report always runs
    changed = run_default(copy, "--set", "explain.examples=2", cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert len(json.loads((copy / "explain" / "summary.json").read_text())["examples"]) == 2
    for name in ("train", "finetune", "attack", "secure"):
        assert f"{name}: already done, skipped" in changed.stderr, name
        assert os.stat(copy / name / "summary.json").st_mtime_ns == before[name], name


def test_the_secure_stage_reruns_alone_with_the_runs_keys(whole_life, tmp_path):
    run, _ = whole_life
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    keys = {p: p.read_bytes() for p in sorted((copy / "secure" / "keys").rglob("*.pem"))}
    assert len(keys) == 4
    code, out, err = run_cli("secure", "release", "--run-dir", str(copy), "--checkpoint", "finetuned")
    assert code == 0, err
    summary = json.loads((copy / "secure" / "summary.json").read_text())
    assert summary["model"] == str(copy / "finetune" / "model.safetensors") and summary["verified"] is True
    assert {p: p.read_bytes() for p in keys} == keys  # the same keys: earlier encrypted copies still open
    assert out.startswith("signed and encrypted ") and out.rstrip().endswith("(verified)")
    before = {p: p.read_bytes() for p in sorted((copy / "secure").rglob("*")) if p.is_file()}
    code, _, err = run_cli("secure", "release", "--run-dir", str(copy), "--checkpoint", "nowhere")
    assert code == 2 and err.startswith("error: secure.checkpoint: ") and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in sorted((copy / "secure").rglob("*")) if p.is_file()} == before
    code, _, err = run_cli("secure", "release", "--run-dir", str(tmp_path / "missing"))
    assert_error_line(code, err, f"error: run directory {tmp_path / 'missing'} does not exist (give RECIPE or "
                                 "--run-dir of an existing run)")


def test_a_bad_later_stage_setting_is_one_line_when_its_turn_comes_and_loses_nothing(whole_life, tmp_path):
    run, _ = whole_life
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    kept = {rel: (copy / rel).read_bytes() for rel in ["stages.json", "finetune/summary.json", "attack/summary.json",
                                                       "finetune/model.safetensors"]}
    code, _, err = run_cli("run", "--run-dir", str(copy), *SETS, "--set", "finetune.task=no_such_task")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "no_such_task" in err, err
    assert {rel: (copy / rel).read_bytes() for rel in kept} == kept  # the earlier fine-tune is still done


NAMED = "(stages: " + ", ".join(ALL) + ")"


@pytest.mark.parametrize("args, message", [
    (["--only", "harden"], f"error: --only: unknown stage 'harden' {NAMED}"),
    (["--skip", "everything"], f"error: --skip: unknown stage 'everything' {NAMED}"),
    (["--set", "stages=[train, nope]"], f"error: stages: unknown stage 'nope' {NAMED}"),
])
def test_an_unknown_stage_is_one_line_and_writes_nothing(tmp_path, args, message):
    code, _, err = run_cli("run", "--run-dir", str(tmp_path / "run"), *args)
    assert_error_line(code, err, message)
    assert not (tmp_path / "run").exists()
