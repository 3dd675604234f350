"""Logit lens (nostalgebraist 2020): the residual stream after every block read through the final norm and the LM
head, as if the model stopped there."""

from __future__ import annotations

import torch

from lmforge.model.decoder import Decoder


@torch.no_grad()
def lens_logits(model: Decoder, residuals: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per residual stream (the embeddings, then each block's output), (T, V) logits; the last equals the
    model's own."""
    return [model.lm_head(model.final_norm(x)) for x in residuals]


def top_tokens(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, k) ids and probabilities of the ``k`` likeliest next tokens (labels) at every position."""
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)  # a classifier may have fewer labels than k
    return top.indices, top.values
