"""Several decoders of one tokenizer as one model: each position's next-token distribution is the mean of
theirs (``probabilities``) or the normalized geometric mean (``log_probabilities``: the mean of their
log-probabilities, renormalized). ``Ensemble`` returns log-probabilities where a decoder returns logits, so the
evaluation code (validation loss, task scoring, which takes ``forward_packed`` and ``lm_head`` apart, and
generation without the KV cache) runs on it unchanged."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.fused_ops import IGNORE_INDEX


def combine(logits: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Log-probabilities (..., V) of the members' logits (each (..., V)) combined by ``mode``."""
    logp = torch.stack([F.log_softmax(x.float(), dim=-1) for x in logits])  # (N, ..., V)
    if mode == "probabilities":
        return torch.logsumexp(logp, dim=0) - math.log(len(logits))
    return F.log_softmax(logp.mean(0), dim=-1)


class EnsembleHead(nn.Module):
    """The LM heads of the members over their stacked hidden states (..., N, C) -> combined log-probabilities."""

    def __init__(self, members: nn.ModuleList, mode: str):
        super().__init__()
        self.members, self.mode = members, mode

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return combine([m.lm_head(hidden[..., i, :]) for i, m in enumerate(self.members)], self.mode)


class Ensemble(nn.Module):
    def __init__(self, models: list[nn.Module], mode: str = "probabilities"):
        super().__init__()
        dims = {m.dims for m in models}
        if len({(d.vocab_size, d.context_length) for d in dims}) != 1:
            raise ValueError("ensemble members must share the vocabulary and context length")
        self.members = nn.ModuleList(models)
        self.dims = models[0].dims
        self.mode = mode
        self.lm_head = EnsembleHead(self.members, mode)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Combined log-probabilities (B, T, V); with targets, their mean negative log-likelihood."""
        logp = combine([m(tokens) for m in self.members], self.mode)
        if targets is None:
            return logp
        return F.nll_loss(logp.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    def forward_packed(self, tokens: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """The members' final hidden states stacked (B, T, N, C), for ``lm_head``."""
        return torch.stack([m.forward_packed(tokens, positions, attn_mask) for m in self.members], dim=2)
