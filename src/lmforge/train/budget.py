"""Whether a run can learn: the training split's tokens against what ``train.max_steps`` global batches read
(before training), and the validation loss at the end against the seeded initial model's (after)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import yaml

from lmforge.core.metrics import read_metrics
from lmforge.data.packing import TokenShards
from lmforge.errors import DataError
from lmforge.recipe import RunConfig
from lmforge.train.config import sequence_length

# A split that the run reads through in fewer optimizer steps than this is repeated every few steps: the
# model memorizes its few sequences instead of learning the language (the 605 tokens for 100 steps
# of 16 x 256 were one batch, read 100 times). Three steps still warns on a split of two batches.
FEW_STEPS = 3
# What the packed training split is made from: a recipe that changes one of them makes it again (--redo)
SPLIT_SECTIONS = ("seed", "data", "tokenizer", "pack")


@dataclasses.dataclass(frozen=True)
class TokenBudget:
    """The training split (``tokens``, in ``windows`` training sequences of ``seq_len`` + 1) and what the run
    reads: ``max_steps`` global batches of ``batch_size`` sequences (all processes together)."""
    where: Path
    tokens: int
    windows: int
    seq_len: int
    batch_size: int
    max_steps: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def consumed(self) -> int:
        return self.max_steps * self.tokens_per_step

    @property
    def epochs(self) -> float:
        """How many times the run reads the split (the ``epoch`` of metrics.jsonl at the last step)."""
        return self.max_steps * self.batch_size / self.windows if self.windows else math.inf


def token_budget(run, cfg: RunConfig) -> TokenBudget | None:
    """The budget of ``run``'s packed training split (None: not packed yet)."""
    folder = run.tokens("train")
    if not (folder / "index.json").is_file():
        return None
    shards = TokenShards(folder)
    seq_len = sequence_length(cfg.train, cfg.model.dims(shards.vocab_size).context_length)
    windows = shards.num_windows(seq_len) if shards.num_tokens else 0
    return TokenBudget(folder, shards.num_tokens, windows, seq_len, cfg.train.batch_size, cfg.train.max_steps)


def packed_by(run, cfg: RunConfig) -> bool:
    """Whether the split on disk was made with this recipe's ``SPLIT_SECTIONS`` (the run directory's recipe.yaml
    records the last recipe): a check before the data stages are redone must not judge the split they replace."""
    try:
        recorded = yaml.safe_load(run.recipe.read_text())
    except (OSError, yaml.YAMLError):
        return False
    mine = cfg.model_dump(mode="json")
    return isinstance(recorded, dict) and all(
        json.dumps(recorded.get(s), sort_keys=True) == json.dumps(mine[s], sort_keys=True) for s in SPLIT_SECTIONS)


def budget_problem(b: TokenBudget) -> tuple[str, bool] | None:
    """(message, always an error) when the split cannot feed the run: no sequence at all (an error), or
    fewer tokens than one batch, or than FEW_STEPS steps' worth while the run reads it more than once (a
    warning; ``train.strict`` makes it an error). None when it can."""
    if b.tokens == 0:
        return (f"the training split ({b.where}) holds no token: nothing to train on; give the run more data "
                "(data.sources) or loosen the data filters"), True
    if b.windows == 0:
        return (f"the training split ({b.where}) holds {b.tokens:,} tokens, fewer than one training sequence of "
                f"{b.seq_len + 1:,} (train.seq_len {b.seq_len:,} + 1): nothing to train on; give the run more data "
                "(data.sources) or lower train.seq_len"), True
    per_step = f"{b.batch_size:,} x {b.seq_len:,} = {b.tokens_per_step:,} tokens"
    if b.tokens < b.tokens_per_step:
        size = f"fewer than one batch ({per_step})"
    elif b.tokens < FEW_STEPS * b.tokens_per_step and b.consumed > b.tokens:
        size = f"fewer than {FEW_STEPS} steps' worth (a step reads {per_step})"
    else:
        return None
    return (f"the training split ({b.where}) holds {b.tokens:,} tokens, {size}: {b.max_steps:,} steps read "
            f"{b.consumed:,} tokens, {b.epochs:,.1f} epochs of it, so the model memorizes it instead of learning; "
            "give the run more data (data.sources), loosen the data filters, or lower train.max_steps or "
            "train.batch_size"), False


def check_budget(b: TokenBudget | None, strict: bool) -> str | None:
    """Raise the problem of ``b`` where it is an error (always, or with ``train.strict``); else return the
    warning, or None."""
    problem = None if b is None else budget_problem(b)
    if problem is None:
        return None
    message, always = problem
    if always:
        raise DataError(message)
    if strict:
        raise DataError(f"train.strict: {message}")
    return message + " (train.strict: true makes this an error)"


def validation_trend(metrics: Path) -> tuple[float, float] | None:
    """(first, last) validation loss of a run's metrics.jsonl: the seeded initial model's (step 0) and the
    final one's. None with fewer than two validations."""
    evals = [r for r in read_metrics(metrics) if r.get("kind") == "eval" and "val_loss" in r]
    if len(evals) < 2:
        return None
    first = min(evals, key=lambda r: r.get("step", 0))  # the first of the lowest step: the initial model's
    last = max(reversed(evals), key=lambda r: r.get("step", 0))  # the last of the highest step
    return float(first["val_loss"]), float(last["val_loss"])  # "nan" and "inf" are written as strings


def loss_rose(before: float, after: float) -> bool:
    """Whether the validation loss ended worse than it began (a non-finite end counts as worse)."""
    return math.isfinite(before) and not after <= before


def rose_message(before: float, after: float, cfg: RunConfig, b: TokenBudget | None) -> str:
    data = "" if b is None else (f", more training data (the split holds {b.tokens:,} tokens, read "
                                 f"{b.epochs:,.1f} times)")
    return (f"validation loss rose from {before:.4f} to {after:.4f}: the model did not learn; try a lower train.lr "
            f"(now {cfg.train.lr:g}){data} or fewer train.max_steps (now {cfg.train.max_steps:,})")
