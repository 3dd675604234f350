"""Exact resume: training killed with SIGKILL (once in the middle of a checkpoint write, with an older
checkpoint complete beside it) and resumed gives per-step losses bit-identical to an uninterrupted run."""

import pytest

from conftest import (assert_resumes_bit_identically, kill_when, lmforge_process, lmforge_run, train_losses as losses,
                      uninterrupted_losses)

pytestmark = pytest.mark.integration

# tiny model at batch 2 x 32: fast steps, but checkpoints of ~60 MB that take a while to write; one checkpoint
# kept, so that the older one must stay until the newer one is complete
SETTINGS = ["--set", "model.size=tiny", "--set", "train.max_steps=24", "--set", "train.batch_size=2",
            "--set", "train.seq_len=32", "--set", "train.checkpoint_every=4", "--set", "train.eval_every=8",
            "--set", "train.warmup_steps=3", "--set", "train.keep_checkpoints=1"]


def one_line(text: str) -> str:
    """Console output with its line wrapping undone (long paths are folded at the terminal width)."""
    return "".join(text.split())


def test_sigkill_and_resume_is_bit_identical(data_run, tmp_path):
    expected = uninterrupted_losses(data_run, tmp_path / "reference", SETTINGS, steps=24)

    ckpts = data_run / "train" / "checkpoints"
    first, second = ckpts / "step_00000004", ckpts / "step_00000008"

    def half_written_second() -> list:
        return [p for p in ckpts.iterdir() if p.name.startswith(f"{second.name}.tmp-")]

    # 1) killed while the second checkpoint is being written: the first one is complete
    proc = lmforge_process("train", "--run-dir", str(data_run), *SETTINGS)
    kill_when(proc, lambda: (first / "state.json").exists() and half_written_second())
    leftovers = half_written_second()
    assert leftovers and not second.exists()
    assert [p for p in ckpts.iterdir() if p not in leftovers] == [first]
    # 2) resumed from the complete older checkpoint, not the half-written one; killed in the middle of training
    proc = lmforge_process("train", "--run-dir", str(data_run), "--resume", *SETTINGS)
    kill_when(proc, lambda: any(s >= 13 for s, _ in losses(data_run)))
    assert one_line(f"resuming from {first} (step 4)") in one_line(proc.stderr.read())
    assert not any(p.exists() for p in leftovers)  # the half-written folder was removed
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
