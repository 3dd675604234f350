"""Precision, activation checkpointing, torch.compile and memory through the CLI: mixed precision trains and
checkpoints its gradient scaler, compile and checkpointing run, an impossible memory budget is refused
before any work, and an out-of-memory failure is one line with the estimator's suggestion."""

import json

import pytest
import torch

from conftest import run_cli, train_losses as step_losses
from lmforge.model.decoder import Decoder

pytestmark = pytest.mark.integration

SHORT = ["--set", "train.max_steps=4", "--set", "train.eval_every=0", "--set", "train.checkpoint_every=4"]


def train_losses(run_dir):
    return [loss for _, loss in step_losses(run_dir)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_its_scaler(data_run, precision):
    code, _, err = run_cli("train", "--run-dir", str(data_run), *SHORT, "--set", f"train.precision={precision}",
                           "--set", "train.activation_checkpointing=true", "--set", "train.micro_batch_size=auto")
    assert code == 0, err
    losses = train_losses(data_run)
    assert len(losses) == 4 and all(0 < loss < 10 for loss in losses)
    state = json.loads((data_run / "train" / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert (state["grad_scaler"] is not None) == (precision == "fp16")
    if precision == "fp16":
        assert state["grad_scaler"]["scale"] > 0


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("bf16", 2e-3)])
def test_compile_and_checkpointing_match_eager_losses(data_run, tmp_path, precision, tolerance):
    """fp32: compiled blocks around the eager chunked loss; bf16: the compiled plain loss (Decoder.head)."""
    import shutil

    eager = tmp_path / "eager"
    shutil.copytree(data_run, eager)
    options = [*SHORT, "--set", f"train.precision={precision}"]
    assert run_cli("train", "--run-dir", str(eager), *options)[0] == 0
    code, _, err = run_cli("train", "--run-dir", str(data_run), *options, "--set", "train.compile=true",
                           "--set", "train.activation_checkpointing=true")
    assert code == 0, err
    assert train_losses(data_run) == pytest.approx(train_losses(eager), rel=tolerance)


def test_memory_that_cannot_hold_one_sequence_is_refused_before_any_work(data_run):
    code, _, err = run_cli("train", "--run-dir", str(data_run), *SHORT, "--set", "train.memory_limit_gb=0.01")
    lines = err.strip().splitlines()
    assert code != 0 and lines[-1].startswith("error: train: even one sequence of 64 tokens"), err
    assert "Traceback" not in err
    assert not (data_run / "train" / "checkpoints").exists() and not (data_run / "train" / "metrics.jsonl").exists()


def test_out_of_memory_is_one_line_with_the_estimators_suggestion(data_run, monkeypatch):
    original = Decoder.forward

    def forward(self, tokens, targets=None):
        if self.training and targets is not None:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 99999999999 bytes")
        return original(self, tokens, targets)

    monkeypatch.setattr(Decoder, "forward", forward)
    code, _, err = run_cli("train", "--run-dir", str(data_run), *SHORT)
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert lines[0].startswith("error: out of memory on cpu at micro-batch 8 x 64 tokens: the estimator predicts")
    assert "try train.micro_batch_size=4" in lines[0]


def test_bf16_autocast_really_runs_matmuls_in_bf16(data_run, monkeypatch):
    seen = []
    original = torch.nn.Linear.forward

    def forward(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", forward)
    assert run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=1", "--set", "train.eval_every=0",
                   "--set", "train.precision=bf16")[0] == 0
    assert torch.bfloat16 in seen
