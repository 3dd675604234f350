"""Tokens/s counts the updates applied in this invocation only: a skipped step's time and tokens are left out,
and so are the steps (and skips) of the run it resumed from. Step times come from a fake clock, so every
figure is known exactly."""

import json
import types

import pytest

from conftest import run_cli
from lmforge.core.metrics import read_metrics
from lmforge.train import loop
from test_nonfinite import poison_training_calls

pytestmark = pytest.mark.integration

SETTINGS = ["--set", "train.batch_size=4", "--set", "train.seq_len=32", "--set", "train.checkpoint_every=3"]
PER_STEP = 4 * 32  # tokens of one update


def fake_clock(monkeypatch, step_seconds):
    """``time.perf_counter`` of the training loop: it reads the clock before and after each step, and the
    i-th step lasts ``step_seconds[i]`` (binary fractions: every sum below is exact)."""
    seconds, now, calls = iter(step_seconds), [0.0], [0]

    def perf_counter():
        calls[0] += 1
        if calls[0] % 2 == 0:  # after a step
            now[0] += next(seconds)
        return now[0]

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=perf_counter))


def train(monkeypatch, run_dir, max_steps, step_seconds, poisoned_call, *extra):
    """Train to ``max_steps`` with the ``poisoned_call``-th training forward of this invocation non-finite (that
    step is skipped); returns train/summary.json and the per-step tokens/s of metrics.jsonl."""
    monkeypatch.undo()
    fake_clock(monkeypatch, step_seconds)
    poison_training_calls(monkeypatch, bad_calls={poisoned_call})
    code, _, err = run_cli("train", "--run-dir", str(run_dir), *SETTINGS, "--set", f"train.max_steps={max_steps}",
                           *extra)
    assert code == 0, err
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    records = read_metrics(run_dir / "train" / "metrics.jsonl")
    return summary, {r["step"]: r["tokens_per_s"] for r in records if r["kind"] == "train"}


def test_tokens_per_s_of_a_resumed_run_counts_only_its_own_applied_updates(data_run, monkeypatch):
    # steps 1-3, step 2 skipped: 2 updates of 0.5 s and 2 s (the skipped 0.25 s is not counted)
    summary, per_step = train(monkeypatch, data_run, 3, [0.5, 0.25, 2.0], 2)
    assert (summary["skipped_steps"], summary["resumed_from"]) == (1, 0)
    assert summary["tokens_per_s"] == 2 * PER_STEP / 2.5
    assert per_step == {1: PER_STEP / 0.5, 3: PER_STEP / 2.0}

    # resumed at step 3 to step 6, step 5 skipped: updates 4 and 6, of 1 s and 0.25 s; the first invocation's
    # steps and skip count for nothing here
    summary, per_step = train(monkeypatch, data_run, 6, [1.0, 4.0, 0.25], 2, "--resume")
    assert (summary["skipped_steps"], summary["resumed_from"]) == (2, 3)
    assert summary["tokens_per_s"] == 2 * PER_STEP / 1.25
    assert per_step == {1: PER_STEP / 0.5, 3: PER_STEP / 2.0, 4: PER_STEP / 1.0, 6: PER_STEP / 0.25}
