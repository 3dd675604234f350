"""The training split against what a run reads (thresholds, messages with the numbers), and the validation
loss at the end against the initial model's."""

import json
import math
from pathlib import Path

import pytest

from lmforge.errors import DataError
from lmforge.recipe import load_recipe
from lmforge.train.budget import (
    FEW_STEPS,
    TokenBudget,
    budget_problem,
    check_budget,
    loss_rose,
    rose_message,
    validation_trend,
)
from lmforge.train.config import TrainConfig

SPLIT = Path("/run/pack/train")


def budget(tokens: int, *, batch_size: int = 16, seq_len: int = 32, max_steps: int = 100) -> TokenBudget:
    return TokenBudget(SPLIT, tokens, max(0, (tokens - 1) // seq_len), seq_len, batch_size, max_steps)


def test_an_empty_split_and_one_shorter_than_a_sequence_are_always_errors():
    assert budget_problem(budget(0)) == (
        "the training split (/run/pack/train) holds no token: nothing to train on; give the run more data "
        "(data.sources) or loosen the data filters", True)
    assert budget_problem(budget(32)) == (
        "the training split (/run/pack/train) holds 32 tokens, fewer than one training sequence of 33 "
        "(train.seq_len 32 + 1): nothing to train on; give the run more data (data.sources) or lower train.seq_len",
        True)
    for strict in (False, True):
        with pytest.raises(DataError, match=r"^the training split \(/run/pack/train\) holds no token"):
            check_budget(budget(0), strict)


def test_a_small_split_names_the_numbers_and_the_epochs():
    # 605 tokens, 100 steps of 16 x 32: 18 windows of 33 tokens, read 100 * 16 / 18 times
    message, always = budget_problem(budget(605))
    assert not always
    assert message == (
        "the training split (/run/pack/train) holds 605 tokens, fewer than 3 steps' worth (a step reads 16 x 32 = "
        "512 tokens): 100 steps read 51,200 tokens, 88.9 epochs of it, so the model memorizes it instead of "
        "learning; give the run more data (data.sources), loosen the data filters, or lower train.max_steps or "
        "train.batch_size")
    message, _ = budget_problem(budget(300, max_steps=2))
    assert message.startswith("the training split (/run/pack/train) holds 300 tokens, fewer than one batch "
                              "(16 x 32 = 512 tokens): 2 steps read 1,024 tokens, 3.6 epochs of it")


def test_a_few_steps_worth_warns_only_when_the_run_reads_the_split_more_than_once():
    per_step = 16 * 32
    assert FEW_STEPS == 3
    assert budget_problem(budget(FEW_STEPS * per_step)) is None  # three steps' worth: enough
    assert budget_problem(budget(FEW_STEPS * per_step - 1)) is not None
    assert budget_problem(budget(2 * per_step, max_steps=2)) is None  # read once: nothing repeats
    assert budget_problem(budget(2 * per_step, max_steps=3)) is not None
    assert budget_problem(budget(per_step - 1, max_steps=1)) is not None  # one batch repeats its own sequences
    assert budget_problem(budget(10_000_000)) is None


def test_strict_turns_the_warning_into_an_error():
    warning = check_budget(budget(605), strict=False)
    assert warning.endswith("train.batch_size (train.strict: true makes this an error)")
    with pytest.raises(DataError) as refused:
        check_budget(budget(605), strict=True)
    assert str(refused.value) == "train.strict: " + warning.removesuffix(" (train.strict: true makes this an error)")
    assert check_budget(None, strict=True) is None  # not packed yet: checked again when the stage runs
    assert check_budget(budget(10_000_000), strict=True) is None
    assert TrainConfig().strict is False and TrainConfig(strict=True).strict is True


def test_validation_trend_is_the_initial_against_the_last_validation(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"kind": "eval", "step": 0, "val_loss": 6.2}, {"kind": "train", "step": 1, "loss": 6.0},
               {"kind": "eval", "step": 50, "val_loss": 5.0}, {"kind": "eval", "step": 100, "val_loss": 8.5}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert validation_trend(metrics) == (6.2, 8.5)
    metrics.write_text(json.dumps({"kind": "eval", "step": 0, "val_loss": 6.2}) + "\n")
    assert validation_trend(metrics) is None  # one validation: no trend
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [records[0], {"kind": "eval", "step": 9, "val_loss": "nan"}]))
    before, after = validation_trend(metrics)
    assert before == 6.2 and math.isnan(after)
    assert validation_trend(tmp_path / "absent.jsonl") is None


def test_loss_rose_and_its_message():
    assert loss_rose(6.2, 8.5) and loss_rose(6.2, math.nan) and loss_rose(6.2, math.inf)
    assert not loss_rose(6.2, 6.2) and not loss_rose(6.2, 3.0) and not loss_rose(math.nan, 8.5)
    cfg = load_recipe("debug", ["train.lr=10"])
    assert rose_message(6.2, 8.5, cfg, budget(605)) == (
        "validation loss rose from 6.2000 to 8.5000: the model did not learn; try a lower train.lr (now 10), more "
        "training data (the split holds 605 tokens, read 88.9 times) or fewer train.max_steps (now 20)")
    assert rose_message(6.2, 8.5, cfg, None).endswith("try a lower train.lr (now 10) or fewer train.max_steps (now 20)")
