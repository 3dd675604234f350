"""A non-finite loss skips the update without touching weights or optimizer state, is counted, and
stops the run after too many in a row."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from lmforge.core.metrics import read_metrics
from lmforge.model.decoder import Decoder

pytestmark = pytest.mark.integration


def poison_training_calls(monkeypatch, bad_calls):
    original = Decoder.forward
    calls = {"n": 0}

    def forward(self, tokens, targets=None):
        out = original(self, tokens, targets)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(Decoder, "forward", forward)


def test_nonfinite_step_is_skipped_and_state_untouched(data_run, monkeypatch):
    poison_training_calls(monkeypatch, bad_calls={3})
    code, _, err = run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=5",
                           "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=10")
    assert code == 0, err
    records = read_metrics(data_run / "train" / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 4, 5]
    skips = [r for r in records if r["kind"] == "skip"]
    assert [(r["step"], r["skipped_total"]) for r in skips] == [(3, 1)]
    ck = data_run / "train" / "checkpoints"
    for name in ("model.safetensors", "optimizer.safetensors"):
        before, after = load_file(ck / "step_00000002" / name), load_file(ck / "step_00000003" / name)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    skipped, moved = (load_file(ck / f"step_0000000{i}" / "model.safetensors") for i in (3, 4))
    assert any(not torch.equal(moved[k], skipped[k]) for k in moved)


def test_too_many_nonfinite_in_a_row_stops_the_run(data_run, monkeypatch):
    poison_training_calls(monkeypatch, bad_calls=set(range(2, 100)))
    code, _, err = run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=10",
                           "--set", "train.max_nonfinite_in_row=3")
    assert code == 3
    assert err.strip().splitlines()[-1] == (
        "error: training stopped at step 4: 3 non-finite losses in a row (train.max_nonfinite_in_row=3); "
        "try a lower train.lr")
