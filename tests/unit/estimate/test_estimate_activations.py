"""The estimator's byte counts against what torch really holds: the tensors autograd saves in a block and in
the loss (every precision, dropout on and off, activation checkpointing), the fused loss's peak working
memory (its chunk of logits), and the optimizer state of all seven optimizers after a real step."""

import contextlib

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from lmforge.estimate.activations import StepShape, block_saved, checkpointed_block_saved, loss_memory
from lmforge.estimate.optimizer_state import optimizer_state_bytes
from lmforge.model.config import ModelConfig
from lmforge.model.decoder import Decoder
from lmforge.model.fused_ops import linear_cross_entropy, loss_chunk_rows
from lmforge.train.config import OPTIMIZERS, TrainConfig
from lmforge.train.measure import LiveTensorBytes
from lmforge.train.optim import build_optimizer

B, T = 3, 24


def saved_bytes(model, run) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` executes, parameters and buffers aside."""
    exclude = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def autocast(precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_block_and_loss_saved_bytes_match_autograd(precision, dropout):
    dims = ModelConfig(size="debug", dropout=dropout).dims(97)
    model = Decoder(dims).train()
    x = torch.randn(B, T, dims.d_model, requires_grad=True)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    shape = StepShape(dims, B, T, precision)
    casts = 2 if precision != "fp32" else 0  # autocast's low-precision copy of each matmul weight

    def block():
        with autocast(precision):
            model.layers[0](x, cos, sin)

    matrices = sum(p.numel() for p in model.layers[0].parameters() if p.ndim == 2)
    assert saved_bytes(model, block) == sum(block_saved(shape).values()) + casts * matrices

    targets = torch.randint(0, 97, (B * T,))
    exclude_targets = targets.untyped_storage().nbytes() if precision != "fp32" else 0  # a view of the batch in training

    def loss():
        with autocast(precision):
            linear_cross_entropy(model.final_norm(x).flatten(0, 1), model.lm_head.weight, targets)

    expected = loss_memory(shape)["saved"] + casts * model.lm_head.weight.numel()
    assert saved_bytes(model, loss) - exclude_targets == expected


@pytest.mark.parametrize("vocab, batch, seq", [(4096, 6, 300), (32768, 3, 200)])
def test_fused_loss_peak_matches_the_estimate_of_its_chunk(vocab, batch, seq):
    """The peak of live tensor bytes while the fused loss runs is its saved gradients plus one chunk of
    logits: the estimate counts the chunk with the loss's own rows-per-chunk rule. Both shapes take
    several chunks (the last one partial); 4096 is above the rule's floor of 256 rows, 32768 at it."""
    dims = ModelConfig(size="debug").dims(vocab)
    assert batch * seq > 1.5 * loss_chunk_rows(vocab)  # the chunk, not the whole batch, sets the peak
    tracker = LiveTensorBytes()
    with tracker:  # everything made inside, so that the tracker knows every storage before the loss
        model = Decoder(dims).train()
        x = torch.randn(batch, seq, dims.d_model, requires_grad=True)  # the residual stream
        targets = torch.randint(0, vocab, (batch * seq,))
        before = tracker.live
        tracker.reset_peak()
        linear_cross_entropy(model.final_norm(x).flatten(0, 1), model.lm_head.weight, targets)
    measured = tracker.peak - before
    memory = loss_memory(StepShape(dims, batch, seq))
    predicted = memory["saved"] + memory["forward"]
    # seen: at most 0.02% (the estimate counts one (rows,) temporary too many); a chunk of half or twice the
    # rows would be off by 40% or more
    assert abs(predicted / measured - 1) < 0.01, (predicted, measured)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpointed_block_saves_only_its_input(precision):
    dims = ModelConfig(size="debug").dims(97)
    model = Decoder(dims).train()
    wrapped = checkpoint_wrapper(model.layers[0])
    x = torch.randn(B, T, dims.d_model, requires_grad=True)

    def block():
        with autocast(precision):
            wrapped(x, model.rope_cos[:T], model.rope_sin[:T])

    assert saved_bytes(model, block) == checkpointed_block_saved(StepShape(dims, B, T, precision))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_bytes_match_a_real_step(name, tie):
    dims = ModelConfig(size="debug", tie_embeddings=tie).dims(97)
    model = Decoder(dims)
    cfg = TrainConfig(optimizer=name)
    opt = build_optimizer(model, cfg)
    tokens = torch.randint(0, 97, (2, 9))
    model(tokens[:, :-1], tokens[:, 1:]).backward()
    opt.step()
    held = sum(t.untyped_storage().nbytes() for entry in opt.state.values() for t in entry.values()
               if torch.is_tensor(t))
    momentum = cfg.rmsprop.momentum if name == "rmsprop" else cfg.sgd.momentum
    assert held == optimizer_state_bytes(dims, name, momentum)
    if name in ("sgd", "rmsprop"):
        other = 0.0 if name == "sgd" else 0.9
        assert optimizer_state_bytes(dims, name, other) != held  # the momentum buffer is counted or not
