"""The figures of the eval stage (eval/results.json) and of validation during training (metrics.jsonl) equal a
plain loop written here: read the packed validation tokens, cut the windows, cross-entropy of each, mean over
tokens, exp, and bits per byte from the split's bytes per token. "before" is the seeded initial model."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from lmforge.checkpoint.load import load_model
from lmforge.core.metrics import read_metrics
from lmforge.recipe import load_recipe
from lmforge.train.loop import build_model

pytestmark = pytest.mark.integration

CPU = torch.device("cpu")


def validation_windows(pack_val, seq_len: int, count: int) -> list[np.ndarray]:
    """The first ``count`` windows of the split as the packer lays them out: window i of a shard is its tokens
    [i*seq_len, i*seq_len + seq_len + 1), shard after shard."""
    index = json.loads((pack_val / "index.json").read_text())
    windows = []
    for shard in index["shards"]:
        tokens = np.fromfile(pack_val / shard["file"], dtype=np.dtype(index["dtype"]).newbyteorder("<"))
        windows += [tokens[i * seq_len:i * seq_len + seq_len + 1] for i in range((len(tokens) - 1) // seq_len)]
    return windows[:count]


@torch.no_grad()
def plain_figures(model, windows, bytes_per_token: float) -> dict:
    model.eval()
    loss_sum, tokens = 0.0, 0
    for window in windows:
        x = torch.from_numpy(window.astype(np.int64))
        logits = model(x[None, :-1])[0].double()  # (T, V)
        loss_sum += F.cross_entropy(logits, x[1:], reduction="sum").item()
        tokens += len(window) - 1
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2) / bytes_per_token,
            "tokens": tokens}


def assert_figures(got: dict, want: dict) -> None:
    assert got["tokens"] == want["tokens"]
    for key in ("loss", "perplexity", "bits_per_byte"):
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key


def test_eval_and_validation_figures_equal_a_plain_loop(data_run):
    code, _, err = run_cli("train", "--run-dir", str(data_run), "--set", "train.max_steps=3",
                           "--set", "train.checkpoint_every=3")
    assert code == 0, err
    code, _, err = run_cli("eval", "--run-dir", str(data_run))
    assert code == 0, err
    results = json.loads((data_run / "eval" / "results.json").read_text())
    cfg = load_recipe(data_run / "recipe.yaml")
    seq_len = cfg.train.seq_len
    index = json.loads((data_run / "pack" / "val" / "index.json").read_text())
    bytes_per_token = index["num_bytes"] / index["num_tokens"]
    windows = validation_windows(data_run / "pack" / "val", seq_len, cfg.eval.max_tokens // seq_len)
    assert len(windows) == cfg.eval.max_tokens // seq_len  # the debug split has more: the limit applies
    assert results["seq_len"] == seq_len and results["step"] == 3

    trained = load_model(data_run / "train" / "checkpoints" / "step_00000003").model
    initial = build_model(cfg, index["vocab_size"], CPU)  # the recipe's seed: the weights training started from
    before = plain_figures(initial, windows, bytes_per_token)
    assert_figures(results["after"], plain_figures(trained, windows, bytes_per_token))
    assert_figures(results["before"], before)
    other_seed = build_model(cfg.model_copy(update={"seed": cfg.seed + 1}), index["vocab_size"], CPU)
    assert abs(plain_figures(other_seed, windows, bytes_per_token)["loss"] - before["loss"]) > 1e-4  # seeds tell

    # validation during training scores the first eval_batches x eval.batch_size windows; step 0: the initial model
    first = windows[:cfg.train.eval_batches * cfg.eval.batch_size]
    logged = {r["step"]: r for r in read_metrics(data_run / "train" / "metrics.jsonl") if r["kind"] == "eval"}
    assert sorted(logged) == [0, 3]
    for step, model in ((0, initial), (3, trained)):
        want = plain_figures(model, first, bytes_per_token)
        assert logged[step]["val_loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-6)
        assert logged[step]["val_perplexity"] == pytest.approx(want["perplexity"], rel=1e-6, abs=1e-6)
        assert logged[step]["val_bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-6, abs=1e-6)
