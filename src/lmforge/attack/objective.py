"""What an attack raises: the loss of one example, computed from its input embeddings.

An ``Example`` is the model's input: attacked tokens (``context``) and fixed ones after them (``suffix``: a
classifier's end-of-text, whose position holds the label logits, or the language model's scored continuation).
Its loss is the cross-entropy of the gold label at the end-of-text, or the mean cross-entropy of the continuation
tokens after the context (teacher-forced). Attacks change the context only.

A language model read as the evaluation stage's label-verbalizer classifier has ``choices`` instead of a suffix:
each label's verbalizer tokens after the prompt (``context``: the task's template around the example's text).
Its logits are each verbalizer's summed log-probability after the prompt (``evaluate.scoring``'s score, one
right-padded row per label: causal attention keeps padding out of every real position), its prediction their
argmax and its loss the gold label's cross-entropy over them. The template's positions (``template``) are never
attacked.
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
    choices: tuple[tuple[int, ...], ...] = ()  # a verbalizer classifier: each label's verbalizer tokens
    template: tuple[int, ...] = ()  # the context positions that are the template's, not the example's text

    @property
    def ids(self) -> list[int]:
        return [*self.context, *self.suffix]

    @property
    def text_tokens(self) -> int:
        """How many context tokens are the example's own (a verbalizer classifier's template's are not)."""
        return len(self.context) - len(self.template)


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
    if example.choices:
        return verbalizer_scores(model, example, x)
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


def verbalizer_logits(model: Decoder, example: Example, x: torch.Tensor) -> torch.Tensor:
    """(B, K) fp64: each label's verbalizer summed log-probability after the prompt embeddings ``x`` (B, T, C),
    from one forward of B * K rows (prompt, then the verbalizer's tokens but its last, right-padded)."""
    B, T, C = x.shape
    K, longest = len(example.choices), max(len(c) for c in example.choices)
    rows = x.new_zeros(B, K, T + longest - 1, C)  # (B, K, T + L - 1, C)
    rows[:, :, :T] = x[:, None]
    for k, choice in enumerate(example.choices):
        if len(choice) > 1:
            rows[:, k, T:T + len(choice) - 1] = embed(model, torch.tensor(choice[:-1], device=x.device))
    h = model.forward_embeddings(rows.reshape(B * K, -1, C)).reshape(B, K, -1, C)
    logits = []
    for k, choice in enumerate(example.choices):
        logprobs = model.lm_head(h[:, k, T - 1:T - 1 + len(choice)])  # (B, n, V): position i predicts i + 1
        logprobs = (logprobs if logprobs.dtype == torch.float64 else logprobs.float()).log_softmax(-1)
        target = torch.tensor(choice, device=x.device).expand(B, -1)  # (B, n)
        logits.append(logprobs.gather(-1, target[..., None])[..., 0].double().sum(-1))  # (B,): summed as scored
    return torch.stack(logits, dim=-1)  # fp64: a confident model's loss (and its gradient) does not round to 0


def verbalizer_scores(model: Decoder, example: Example, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = verbalizer_logits(model, example, x)  # (B, K)
    gold = torch.full((len(x),), example.label, device=x.device)
    return F.cross_entropy(logits, gold, reduction="none"), logits.argmax(-1)


def losses(model: Decoder, example: Example, x: torch.Tensor) -> torch.Tensor:
    return scores(model, example, x)[0]


def loss_and_gradient(model: Decoder, example: Example, x: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    """The loss and prediction at input embeddings ``x`` (1, T, C) and the loss's gradient toward them (1, T, C)."""
    x = x.detach().requires_grad_(True)
    loss, prediction = scores(model, example, x)
    (grad,) = torch.autograd.grad(loss[0], x)
    return float(loss[0].detach()), int(prediction[0]), grad
