"""``finetune.objective: sft``: supervised prompt -> completion fine-tuning on a JSONL file of records.

Each record is tokenized with the base's tokenizer (the run's, or the one a base of another tokenizer brings) as
``encode(prompt) + encode(completion) + end-of-text``; the loss is on the completion's tokens and the
end-of-text only (the prompt's positions have the target ``IGNORE_INDEX``, which the decoder's loss leaves
out). A seeded share of the records is held out for validation. ``SftBatches`` is the training loop's
``batches`` plug point: the loop's ``BatchPlan`` shuffles the training records per epoch from (seed, epoch),
so the batch of step N is a function of (seed, N) and resuming reads the same batches. Every batch is
right-padded to ``train.seq_len`` (the loop's tokens-per-step and throughput figures count what it computes);
an example longer than that is refused, naming its file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.data.tokenizer import read_tokenizer
from lmforge.distributed.context import DistContext
from lmforge.distributed.gradients import scalar
from lmforge.errors import DataError, FinetuneError
from lmforge.evaluate.task_examples import read_task_records
from lmforge.model.fused_ops import IGNORE_INDEX

SPLIT_STREAM = 0x5F7  # the split's random stream, apart from the loop's (seed, epoch) shuffles


@dataclasses.dataclass(frozen=True)
class SftExample:
    ids: np.ndarray  # int64: prompt, completion, end-of-text
    prompt_tokens: int
    completion_bytes: int  # UTF-8 bytes of the completion (bits per byte)
    where: str  # file:line


def sft_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The loss of an ``SftBatches`` batch (B, 2, T): mean cross-entropy over the completion tokens."""
    return model(batch[:, 0], batch[:, 1])


def read_sft_records(path: Path, prompt_field: str, completion_field: str) -> list[tuple[str, str, str]]:
    """(file:line, prompt, completion) of every record; the first bad one is a one-line DataError."""
    if not path.is_file():
        raise DataError(f"finetune.data {path}: not found")
    records = []
    for line, record in read_task_records(path, [prompt_field, completion_field]):
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
        values = []
        for field, setting in ((prompt_field, "prompt_field"), (completion_field, "completion_field")):
            if field not in record:
                raise DataError(f"{where}: no {field!r} field (finetune.{setting})")
            if not isinstance(record[field], str):
                raise DataError(f"{where}: field {field!r} is {type(record[field]).__name__}, not a string")
            values.append(record[field])
        records.append((where, *values))
    if not records:
        raise DataError(f"finetune.data {path}: no records")
    return records


def encode_records(records: list[tuple[str, str, str]], tokenizer, eos: int, seq_len: int) -> list[SftExample]:
    examples = []
    for where, prompt, completion in records:
        p = tokenizer.encode(prompt, add_special_tokens=False).ids
        c = tokenizer.encode(completion, add_special_tokens=False).ids
        ids = np.array([*p, *c, eos], dtype=np.int64)
        if len(ids) < 2:
            raise DataError(f"{where}: prompt and completion are both empty (nothing to predict)")
        if len(ids) - 1 > seq_len:  # the end-of-text is a target only
            raise DataError(f"{where}: prompt and completion are {len(ids) - 1} tokens, more than train.seq_len "
                            f"{seq_len} (shorten the example or raise train.seq_len up to the base's context)")
        examples.append(SftExample(ids, len(p), len(completion.encode("utf-8")), where))
    return examples


def split_examples(examples: list[SftExample], val_fraction: float, seed: int
                   ) -> tuple[list[SftExample], list[SftExample]]:
    """(training, validation) examples, each in file order: a seeded ``val_fraction`` share (at least one)
    held out."""
    n = len(examples)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"finetune.data: {n} record(s) leave none for training after holding out "
                        f"finetune.val_fraction={val_fraction} for validation")
    held = set(np.random.default_rng([seed, SPLIT_STREAM]).permutation(n)[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def pad_batch(examples: list[SftExample], seq_len: int, pad_id: int) -> np.ndarray:
    """(B, 2, seq_len) int64: the inputs right-padded with ``pad_id``, and the targets, IGNORE_INDEX at the
    prompt's positions and the padding."""
    out = np.full((len(examples), 2, seq_len), IGNORE_INDEX, dtype=np.int64)
    out[:, 0] = pad_id
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        out[row, 0, :n] = e.ids[:-1]
        out[row, 1, :n] = e.ids[1:]
        out[row, 1, :max(0, e.prompt_tokens - 1)] = IGNORE_INDEX  # targets that are prompt tokens
    return out


class SftBatches:
    """The loop's ``batches`` plug point for prompt -> completion records (``train.loop.BatchSource``)."""

    def __init__(self, train: list[SftExample], val: list[SftExample], pad_id: int):
        self.train, self.val, self.pad_id = train, val, pad_id
        h = hashlib.sha256()
        for part in (train, val):
            for e in part:
                h.update(np.array([e.prompt_tokens, len(e.ids)], dtype=np.int64).tobytes() + e.ids.tobytes())
            h.update(b"|")
        self.digest = "sft-" + h.hexdigest()[:16]

    def num_windows(self, seq_len: int) -> int:
        return len(self.train)

    def windows(self, indices, seq_len: int) -> np.ndarray:
        return pad_batch([self.train[int(i)] for i in indices], seq_len, self.pad_id)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, seq_len: int, *, batch_size: int, max_windows: int | None,
                 device: torch.device, ctx: DistContext | None = None) -> dict:
        """The completion loss over the first ``max_windows`` held-out records (all if None), per completion
        token, spread over the data-parallel ranks as ``evaluate_loss`` does (every rank runs the same number
        of forward passes). Bits per byte: per completion byte."""
        ctx = ctx or DistContext(device=device)
        count = len(self.val) if max_windows is None else min(len(self.val), max_windows)
        mine = list(range(ctx.dp_rank, count, ctx.dp_size))
        passes = math.ceil(math.ceil(count / ctx.dp_size) / batch_size)
        was_training = model.training
        model.eval()
        loss_sum, tokens, num_bytes = 0.0, 0, 0
        for i in range(0, passes * batch_size, batch_size):
            indices = mine[i:i + batch_size]
            examples = [self.val[j] for j in indices] or [self.val[0]]
            batch = torch.from_numpy(pad_batch(examples, seq_len, self.pad_id)).to(device)
            loss = sft_loss(model, batch)
            if indices:
                n = int((batch[:, 1] != IGNORE_INDEX).sum())
                loss_sum += scalar(loss) * n
                tokens += n
                num_bytes += sum(e.completion_bytes for e in examples)
        model.train(was_training)
        loss_sum, tokens, num_bytes = (v / ctx.layout.tp for v in ctx.all_reduce_sum(
            [loss_sum, float(tokens), float(num_bytes)]))
        loss = loss_sum / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "bits_per_byte": loss * tokens / math.log(2) / max(1.0, num_bytes), "tokens": int(tokens)}


def load_sft_data(fc, tokenizer_path: Path, eos_id: int, seq_len: int, seed: int) -> SftBatches:
    """``finetune.data`` read, tokenized with the base's tokenizer (ending each record with ``eos_id``) and
    split; every refusal before any write."""
    if fc.data is None:
        raise FinetuneError("finetune.objective=sft needs finetune.data: a JSONL file of records with "
                            f"{fc.prompt_field!r} and {fc.completion_field!r} string fields")
    records = read_sft_records(Path(fc.data), fc.prompt_field, fc.completion_field)
    tokenizer = read_tokenizer(tokenizer_path)
    train, val = split_examples(encode_records(records, tokenizer, eos_id, seq_len), fc.val_fraction, seed)
    return SftBatches(train, val, eos_id)
