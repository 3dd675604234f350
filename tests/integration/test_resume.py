"""Exact resume: training killed with SIGKILL (once in the middle of a checkpoint write) and resumed
gives per-step losses bit-identical to an uninterrupted run."""

import pytest

from conftest import (assert_resumes_bit_identically, kill_when, lmforge_process, lmforge_run, train_losses as losses,
                      uninterrupted_losses)

pytestmark = pytest.mark.integration

# tiny model at batch 2 x 32: fast steps, but checkpoints of ~60 MB that take a while to write
SETTINGS = ["--set", "model.size=tiny", "--set", "train.max_steps=24", "--set", "train.batch_size=2",
            "--set", "train.seq_len=32", "--set", "train.checkpoint_every=4", "--set", "train.eval_every=8",
            "--set", "train.warmup_steps=3", "--set", "train.keep_checkpoints=2"]


def test_sigkill_and_resume_is_bit_identical(data_run, tmp_path):
    expected = uninterrupted_losses(data_run, tmp_path / "reference", SETTINGS, steps=24)

    ckpts = data_run / "train" / "checkpoints"
    # 1) killed while a checkpoint folder is being written
    proc = lmforge_process("train", "--run-dir", str(data_run), *SETTINGS)
    kill_when(proc, lambda: ckpts.exists() and any(".tmp-" in p.name for p in ckpts.iterdir()))
    # 2) killed in the middle of training, after resuming
    proc = lmforge_process("train", "--run-dir", str(data_run), "--resume", *SETTINGS)
    kill_when(proc, lambda: any(s >= 13 for s, _ in losses(data_run)))
    # 3) resumed to the end
    assert_resumes_bit_identically(data_run, SETTINGS, expected)


def test_train_without_resume_refuses_existing_checkpoints(data_run):
    first = lmforge_process("train", "--run-dir", str(data_run), *SETTINGS)
    kill_when(first, lambda: any(s >= 9 for s, _ in losses(data_run)))
    again = lmforge_run("train", "--run-dir", str(data_run), *SETTINGS)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "pass --resume to continue it" in again.stderr
    assert "Traceback" not in again.stderr
