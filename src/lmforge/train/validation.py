"""Validation loss, perplexity and bits per byte on held-out token shards."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.packing import TokenShards
from lmforge.distributed.context import DistContext
from lmforge.distributed.gradients import scalar


@torch.no_grad()
def evaluate_loss(model: nn.Module, shards: TokenShards, seq_len: int, *, batch_size: int,
                  max_windows: int | None, device: torch.device, ctx: DistContext | None = None) -> dict:
    """Mean next-token loss over the first ``max_windows`` windows of the split (all of them if None).

    Windows are spread over the data-parallel ranks and the sums reduced, so every rank returns the same
    figures. Every rank runs the same number of forward passes (a sharded model's forward is collective):
    one with fewer windows repeats a window and leaves it out of the sums. Bits per byte converts the
    per-token loss with the split's bytes-per-token ratio.
    """
    ctx = ctx or DistContext(device=device)
    total = shards.num_windows(seq_len)
    count = total if max_windows is None else min(total, max_windows)
    mine = list(range(ctx.dp_rank, count, ctx.dp_size))
    passes = math.ceil(math.ceil(count / ctx.dp_size) / batch_size)  # the same on every rank
    was_training = model.training
    model.eval()
    loss_sum, tokens = 0.0, 0
    for i in range(0, passes * batch_size, batch_size):
        indices = mine[i:i + batch_size]
        batch = torch.from_numpy(shards.windows(indices or [0], seq_len)).to(device)  # (B, T+1)
        loss = model(batch[:, :-1], batch[:, 1:])
        if indices:
            n = batch[:, 1:].numel()
            loss_sum += scalar(loss) * n
            tokens += n
    model.train(was_training)
    # the tp ranks of a data-parallel rank, and a pipeline's stages, hold the same sums: count them once
    copies = ctx.layout.tp * ctx.layout.pp
    loss_sum, tokens = (v / copies for v in ctx.all_reduce_sum([loss_sum, float(tokens)]))
    if tokens == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "bits_per_byte": float("nan"), "tokens": 0}
    loss = loss_sum / tokens
    bytes_per_token = shards.num_bytes / max(1, shards.num_tokens)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": loss / math.log(2) / bytes_per_token,
        "tokens": int(tokens),
    }


@torch.no_grad()
def window_losses(model: nn.Module, shards: TokenShards, seq_len: int, *, batch_size: int,
                  max_windows: int | None, device: torch.device) -> np.ndarray:
    """The mean next-token loss of each of the first ``max_windows`` windows (all if None), in one process:
    (W,) float64, for intervals over windows (every window has ``seq_len`` predicted tokens, so their mean
    is the loss ``evaluate_loss`` reports)."""
    total = shards.num_windows(seq_len)
    count = total if max_windows is None else min(total, max_windows)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, count, batch_size):
        batch = torch.from_numpy(shards.windows(list(range(start, min(count, start + batch_size))), seq_len))
        batch = batch.to(device)  # (B, T+1)
        logits = model(batch[:, :-1]).float()  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        out.append(loss.view(len(batch), -1).double().mean(dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)
