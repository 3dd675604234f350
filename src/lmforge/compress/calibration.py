"""Calibration statistics of the dense model: for every block linear layer, the squared L2 norm of each input
feature over the calibration tokens (Wanda's ||X_j||_2^2), gathered with forward pre-hooks in one pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmforge.data.packing import TokenShards
from lmforge.errors import CompressError


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers inside the blocks, by name (embeddings and the LM head are never pruned)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("layers.")}


def calibration_windows(shards: TokenShards, seq_len: int, batches: int, batch_size: int, seed: int) -> np.ndarray:
    """``batches * batch_size`` seeded windows (without repeats while there are enough) of ``seq_len`` tokens."""
    available = shards.num_windows(seq_len)
    if available < 1:
        raise CompressError(f"compress.calibration: the training shards hold fewer than {seq_len + 1} tokens: no "
                            "calibration window")
    count = batches * batch_size
    rng = np.random.default_rng([seed, 0xCA1])
    picks = rng.permutation(available)[:count] if count <= available else rng.integers(0, available, count)
    return shards.windows(np.sort(picks), seq_len)[:, :-1]  # (N, T) inputs


@torch.no_grad()
def input_norms(model: nn.Module, windows: np.ndarray, batch_size: int) -> dict[str, torch.Tensor]:
    """{layer name: (in_features,) sum over calibration tokens of x_j^2} for every block linear layer."""
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in block_linears(model).items()}

    def hook(name):
        def accumulate(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] += x.pow(2).sum(0)
        return accumulate

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in block_linears(model).items()]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(windows), batch_size):
            model(torch.from_numpy(windows[i:i + batch_size]).long())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums
