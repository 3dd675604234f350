"""Optimizers end to end: training killed with SIGKILL and resumed gives bit-identical per-step losses with
every optimizer (Muon: an optimizer chain, Adafactor: factored state) as with AdamW (test_resume.py), and the
equal-budget comparison writes its table, curves and recommendation and reuses finished runs."""

import json

import pytest

from cli_errors import assert_error_line, snapshot
from conftest import (assert_resumes_bit_identically, kill_when, lmforge_process, run_cli, train_losses as losses,
                      uninterrupted_losses)
from lmforge.train.config import OPTIMIZERS

pytestmark = pytest.mark.integration

SETTINGS = ["--set", "train.max_steps=18", "--set", "train.batch_size=4", "--set", "train.seq_len=32",
            "--set", "train.checkpoint_every=3", "--set", "train.eval_every=6", "--set", "train.warmup_steps=3",
            "--set", "train.schedule=wsd", "--set", "train.decay_fraction=0.5"]


@pytest.mark.parametrize("optimizer", [o for o in OPTIMIZERS if o != "adamw"])  # adamw: test_resume.py
def test_sigkill_and_resume_is_bit_identical(data_run, tmp_path, optimizer):
    settings = [*SETTINGS, "--set", f"train.optimizer={optimizer}"]
    expected = uninterrupted_losses(data_run, tmp_path / "reference", settings, steps=18)
    # killed once, after the step-6 checkpoint and before the step-9 one (the resume of a resumed run, the kill
    # during a checkpoint write: test_resume.py)
    proc = lmforge_process("train", "--run-dir", str(data_run), *settings)
    kill_when(proc, lambda: any(s >= 8 for s, _ in losses(data_run)))
    assert_resumes_bit_identically(data_run, settings, expected)


def test_resume_with_another_optimizer_is_refused(data_run):
    assert run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=3", "--set",
                   "train.checkpoint_every=3")[0] == 0
    code, _, err = run_cli("train", "--run-dir", str(data_run), "--resume", "--set", "train.max_steps=6",
                           "--set", "train.checkpoint_every=3", "--set", "train.optimizer=lion")
    assert_error_line(code, err, f"error: cannot resume from {data_run / 'train' / 'checkpoints' / 'step_00000003'}: "
                                 "it was trained with optimizer=adamw (recipe: lion)")


def test_compare_writes_table_curves_and_a_recommendation_with_evidence(data_run):
    args = ["optimizers", "compare", "--run-dir", str(data_run), "--optimizers", "adamw,lion,muon", "--steps", "6",
            "--lr-factors", "1,3", "--set", "train.eval_every=3"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    report = data_run / "optimizers"
    for name in ("results.json", "results.csv", "loss_curves.png", "recommendation.txt"):
        assert (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    assert len(results["runs"]) == 6 and {r["optimizer"] for r in results["runs"]} == {"adamw", "lion", "muon"}
    assert results["settings"]["tokens"] == 6 * 8 * 64  # the same budget for every run
    assert all(r["steps"] == 6 for r in results["runs"])
    ranked = [r["best_val_loss"] for r in results["optimizers"]]
    assert ranked == sorted(ranked)
    assert results["recommendation"].startswith("recommended: ") and "Evidence: after 3,072 tokens" in out
    assert (report / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    again = run_cli(*args)
    assert again[0] == 0 and json.loads((report / "results.json").read_text())["runs"] == results["runs"]


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "adamw,adamx"],
     "error: --optimizers: unknown adamx (choose from adamw, adam, rmsprop, sgd, lion, adafactor, muon)"),
    (["--lr-factors", "1,-2"],
     "error: --optimizers and --lr-factors: give at least one optimizer and positive factors"),
    (["--steps", "1"], "error: Invalid value for '--steps': 1 is not in the range x>=2."),
    (["--set", "train.max_steps=1"], "error: --steps: 1 is too few to compare optimizers (at least 2)"),
])
def test_compare_bad_input_is_one_line(data_run, args, message):
    before = snapshot(data_run)
    code, _, err = run_cli("optimizers", "compare", "--run-dir", str(data_run), *args)
    assert_error_line(code, err, message)
    assert snapshot(data_run) == before
