"""What an attack raises: the loss of one example, computed from its input embeddings.

An ``Example`` is the model's input: attacked tokens (``context``) and fixed ones after them (``suffix``: a
classifier's end-of-text, whose position holds the label logits, or the language model's scored continuation).
Its loss is the cross-entropy of the gold label at the end-of-text, or the mean cross-entropy of the continuation
tokens after the context (teacher-forced). Attacks change the context only.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lmforge.model.decoder import Decoder


@dataclasses.dataclass(frozen=True)
class Example:
    name: str
    context: tuple[int, ...]  # the attacked tokens
    suffix: tuple[int, ...]  # fixed after them: the end-of-text (classifier) or the continuation (language model)
    label: int | None  # a classifier's gold label index; None: the language model's continuation is scored
    attackable: tuple[int, ...]  # the context positions an attack may change (protected tokens' are left out)

    @property
    def ids(self) -> list[int]:
        return [*self.context, *self.suffix]


@dataclasses.dataclass
class Outcome:
    """One example under one attack."""
    loss: float  # the attacked loss
    ids: list[int]  # the input tokens: the adversarial ones of a token attack, the example's for embedding attacks
    delta: torch.Tensor | None  # (T, C): an embedding attack's perturbation (zero rows at fixed positions)
    changed: list[int]  # the positions whose input was changed (a token attack: in the order it changed them)
    queries: int  # forward passes of the model the attack made


def embed(model: Decoder, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, T, C) input embeddings."""
    return model.embed_tokens(ids)


def scores(model: Decoder, example: Example, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of input embeddings ``x`` (B, T, C), laid out as the example's ids, from one forward: the
    example's loss (B,) and its prediction (B,), a classifier's label index, or the language model's count of
    continuation tokens that are the argmax after their prefix."""
    h = model.forward_embeddings(x)  # (B, T, C)
    if example.label is not None:
        logits = model.lm_head(h[:, -1]).float()  # (B, labels): the end-of-text position
        gold = torch.full((len(x),), example.label, device=x.device)
        return F.cross_entropy(logits, gold, reduction="none"), logits.argmax(-1)
    n = len(example.context)
    logits = model.lm_head(h[:, n - 1:-1]).float()  # (B, S, V): position i predicts token i + 1
    targets = torch.tensor(example.suffix, device=x.device).expand(len(x), -1)  # (B, S)
    loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(-1)
    return loss, (logits.argmax(-1) == targets).sum(-1)


def losses(model: Decoder, example: Example, x: torch.Tensor) -> torch.Tensor:
    return scores(model, example, x)[0]


def loss_and_gradient(model: Decoder, example: Example, x: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    """The loss and prediction at input embeddings ``x`` (1, T, C) and the loss's gradient toward them (1, T, C)."""
    x = x.detach().requires_grad_(True)
    loss, prediction = scores(model, example, x)
    (grad,) = torch.autograd.grad(loss[0], x)
    return float(loss[0].detach()), int(prediction[0]), grad
