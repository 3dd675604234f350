"""The prompt -> completion objective (finetune.objective: sft) on a tiny seeded model: its loss is a plain
cross-entropy over the completion tokens and the end-of-text alone, the prompt's positions and the padding get
no gradient, records are tokenized as encode(prompt) + encode(completion) + end-of-text with the run's
tokenizer, the split is seeded, and bad records are one-line errors naming file:line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.data.tokenizer import EOS_TOKEN, load_tokenizer
from lmforge.errors import DataError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.fused_ops import IGNORE_INDEX
from lmforge.rundir import RunDir
from lmforge.transfer.sft import (
    SftBatches,
    SftExample,
    encode_records,
    pad_batch,
    read_sft_records,
    sft_loss,
    split_examples,
)

DIMS = ModelDims(vocab_size=50, **SIZES["debug"])
SEQ = 24


def examples() -> list[SftExample]:
    """Random ids of several prompt and completion lengths (one without a prompt)."""
    rng = np.random.default_rng(7)
    out = []
    for p, c in [(5, 3), (0, 6), (11, 1), (2, 12), (9, 0)]:
        ids = np.array([*rng.integers(1, 50, p + c), 0], dtype=np.int64)
        out.append(SftExample(ids, p, c, f"x.jsonl:{len(out) + 1}"))
    return out


def seeded_model() -> Decoder:
    torch.manual_seed(0)
    return Decoder(DIMS).eval()


def test_the_loss_is_the_cross_entropy_of_the_completion_tokens_alone():
    model, exs = seeded_model(), examples()
    with torch.no_grad():
        loss = sft_loss(model, torch.from_numpy(pad_batch(exs, SEQ, pad_id=0)))
    total, count = 0.0, 0
    for e in exs:  # a plain loop: each example alone, unpadded
        with torch.no_grad():
            logits = model(torch.from_numpy(e.ids[:-1])[None])[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(max(0, e.prompt_tokens - 1), len(e.ids) - 1):  # position t predicts ids[t + 1]
            total -= float(logp[t, e.ids[t + 1]])
            count += 1
    assert count == sum(len(e.ids) - max(1, e.prompt_tokens) for e in exs) == (3 + 1) + 6 + 2 + 13 + 1 == 26
    assert abs(float(loss) - total / count) < 1e-5
    with torch.no_grad():
        full = F.cross_entropy(model(torch.from_numpy(exs[0].ids[:-1])[None])[0], torch.from_numpy(exs[0].ids[1:]))
        alone = sft_loss(model, torch.from_numpy(pad_batch(exs[:1], SEQ, pad_id=0)))
    assert abs(float(full) - float(alone)) > 1e-3  # the prompt's targets would change it: they are masked


def test_prompt_positions_and_padding_get_no_gradient_and_the_pad_token_does_not_matter():
    model, exs = seeded_model(), examples()
    batch = torch.from_numpy(pad_batch(exs, SEQ, pad_id=0))
    hidden = []

    def keep(module, inputs, out):
        out.retain_grad()
        hidden.append(out)

    handle = model.final_norm.register_forward_hook(keep)
    sft_loss(model, batch).backward()
    handle.remove()
    grad = hidden[0].grad.abs().sum(dim=-1)  # (B, T): the loss's gradient at each position's hidden state
    scored = batch[:, 1] != IGNORE_INDEX
    assert torch.all(grad[~scored] == 0) and torch.all(grad[scored] > 0)
    assert scored.sum() == 26 and not scored[0, :4].any() and scored[0, 4:8].all() and not scored[0, 8:].any()
    with torch.no_grad():
        other_pad = sft_loss(model, torch.from_numpy(pad_batch(exs, SEQ, pad_id=33)))
        assert float(other_pad) == pytest.approx(float(sft_loss(model, batch)), abs=1e-6)


def write_jsonl(path, lines) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def test_records_are_encoded_prompt_then_completion_then_end_of_text_with_the_runs_tokenizer(debug_data_run, tmp_path):
    tokenizer = load_tokenizer(RunDir(debug_data_run).tokenizer)
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"q": "def add(a, b):", "a": "\n    return a + b", "id": 1}, "", {"q": "x = 1", "a": ""}])
    records = read_sft_records(path, "q", "a")
    assert records == [(f"{path}:1", "def add(a, b):", "\n    return a + b"), (f"{path}:3", "x = 1", "")]
    first, second = encode_records(records, tokenizer, 0, seq_len=64)
    p = tokenizer.encode("def add(a, b):", add_special_tokens=False).ids
    c = tokenizer.encode("\n    return a + b", add_special_tokens=False).ids
    assert first.ids.tolist() == [*p, *c, tokenizer.token_to_id(EOS_TOKEN)] and first.prompt_tokens == len(p)
    assert second.ids[-1] == tokenizer.token_to_id(EOS_TOKEN) and len(second.ids) == second.prompt_tokens + 1
    with pytest.raises(DataError) as exc:
        encode_records(records, tokenizer, 0, seq_len=len(p) + len(c) - 1)
    assert str(exc.value) == (f"{path}:1: prompt and completion are {len(p) + len(c)} tokens, more than "
                              f"train.seq_len {len(p) + len(c) - 1} (shorten the example or raise train.seq_len up "
                              "to the base's context)")
    assert encode_records(records, tokenizer, 0, seq_len=len(p) + len(c))[0].ids.tolist() == first.ids.tolist()


@pytest.mark.parametrize("lines, message", [
    ([{"prompt": "a", "completion": "b"}, {"prompt": "a"}], "{p}:2: no 'completion' field (finetune.completion_field)"),
    ([{"completion": "b"}], "{p}:1: no 'prompt' field (finetune.prompt_field)"),
    ([{"prompt": "a", "completion": 3}], "{p}:1: field 'completion' is int, not a string"),
    ([{"prompt": None, "completion": "b"}], "{p}:1: field 'prompt' is NoneType, not a string"),
    ([{"prompt": "a", "completion": "b"}, "{not json"], "{p}:2: invalid JSON"),
    ([["a", "b"]], "{p}:1: a record must be a JSON object, got list"),
    (["", "  "], "finetune.data {p}: no records"),
])
def test_bad_records_are_one_line_errors_naming_file_and_line(tmp_path, lines, message):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, lines)
    with pytest.raises(DataError) as exc:
        read_sft_records(path, "prompt", "completion")
    assert str(exc.value) == message.format(p=path)


def test_the_split_is_seeded_and_holds_out_the_share_in_file_order():
    exs = [SftExample(np.array([i + 1, 0]), 1, 1, f"x:{i}") for i in range(40)]
    train, val = split_examples(exs, 0.1, seed=3)
    assert len(val) == 4 and len(train) == 36 and sorted(e.where for e in train + val) == sorted(e.where for e in exs)
    held = {e.where for e in val}
    assert [e.where for e in val] == [e.where for e in exs if e.where in held]  # file order
    assert [e.where for e in split_examples(exs, 0.1, seed=3)[1]] == [e.where for e in val]
    assert [e.where for e in split_examples(exs, 0.1, seed=4)[1]] != [e.where for e in val]
    assert len(split_examples(exs[:3], 0.1, seed=3)[1]) == 1  # at least one record
    with pytest.raises(DataError, match=r"^finetune.data: 1 record\(s\) leave none for training"):
        split_examples(exs[:1], 0.5, seed=3)
    source = SftBatches(train, val, pad_id=0)
    assert source.num_windows(64) == 36 and source.windows([2, 0], 8).shape == (2, 2, 8)
    assert source.digest != SftBatches(val, train, pad_id=0).digest


def test_validation_is_the_completion_loss_per_completion_token():
    model, exs = seeded_model(), examples()
    source = SftBatches(exs[:1], exs, pad_id=0)
    result = source.evaluate(model, SEQ, batch_size=2, max_windows=None, device=torch.device("cpu"))
    with torch.no_grad():
        whole = float(sft_loss(model, torch.from_numpy(pad_batch(exs, SEQ, pad_id=0))))
    assert result["tokens"] == 26 and result["loss"] == pytest.approx(whole, abs=1e-6)
    assert result["bits_per_byte"] == pytest.approx(whole * 26 / np.log(2) / sum(e.completion_bytes for e in exs))
    capped = source.evaluate(model, SEQ, batch_size=2, max_windows=2, device=torch.device("cpu"))
    assert capped["tokens"] == 4 + 6
