"""What an attribution explains: a scalar F of the input tokens, the log-probability of a target.

A ``Target`` is the explained example's attributable tokens (``context``), the tokens after them that stay fixed
(``suffix``) and what is scored: the next token after the context, a continuation (the suffix itself, its summed
log-probability), or a classifier's label at the end-of-text that closes the text. Attribution methods perturb the
context only; the suffix and the scored positions stay where they are.

``log_prob`` runs the decoder's blocks and the head only at the scored positions: at a long context the full
(T, V) logits would be most of the memory of a forward (a 1,024-token window of a 16k vocabulary in fp32 is 64 MB
per sequence), and an attribution runs many sequences at once.
"""

from __future__ import annotations

import dataclasses

import torch

from lmforge.model.decoder import Decoder

NEXT_TOKEN, CONTINUATION, LABEL = "next_token", "continuation", "label"


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str  # NEXT_TOKEN, CONTINUATION or LABEL
    context: tuple[int, ...]  # the attributable tokens
    suffix: tuple[int, ...]  # fixed after them: the continuation's tokens, or the classifier's end-of-text
    scored: tuple[int, ...]  # the ids scored: the next token, each continuation token, or the label's index
    description: str  # the target in words, e.g. the token or label

    @property
    def ids(self) -> list[int]:
        return [*self.context, *self.suffix]

    def positions(self, n_context: int) -> list[int]:
        """The positions whose outputs are scored, for a context of ``n_context`` tokens before the suffix."""
        if self.kind == NEXT_TOKEN:
            return [n_context - 1]
        if self.kind == CONTINUATION:  # position i predicts token i + 1
            return list(range(n_context - 1, n_context + len(self.suffix) - 1))
        return [n_context + len(self.suffix) - 1]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "scored": list(self.scored),
                "context_tokens": len(self.context), "suffix": list(self.suffix)}


def next_token_target(model: Decoder, context: list[int], token: int | None, describe) -> Target:
    """The next token's log-probability after ``context``: ``token``, or the model's likeliest."""
    if token is None:
        with torch.no_grad():
            ids = torch.tensor([context], device=_device(model))
            token = int(model.lm_head(hidden_states(model, ids)[:, -1]).argmax(-1))
    return Target(NEXT_TOKEN, tuple(context), (), (token,), describe(token))


def continuation_target(context: list[int], continuation: list[int], text: str) -> Target:
    """The summed log-probability of ``continuation`` after ``context``."""
    return Target(CONTINUATION, tuple(context), tuple(continuation), tuple(continuation), text)


def label_target(model: Decoder, text_ids: list[int], eos: int, labels: list[str], label: str | None) -> Target:
    """A classifier's log-probability of ``label`` (default: its prediction) at the end-of-text after the text."""
    if label is None:
        with torch.no_grad():
            ids = torch.tensor([[*text_ids, eos]], device=_device(model))
            label = labels[int(model.lm_head(hidden_states(model, ids)[:, -1]).argmax(-1))]
    return Target(LABEL, tuple(text_ids), (eos,), (labels.index(label),), label)


def hidden_states(model: Decoder, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, C): the final-normed last block output, through the model's own modules (so that hooks on
    ``embed_tokens`` or a block, as Captum's layer methods set, see and replace their outputs)."""
    T = tokens.shape[1]
    x = model.embed_tokens(tokens)  # (B, T, C)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    for layer in model.layers:
        x = layer(x, cos, sin)
    return model.final_norm(x)


def log_prob(model: Decoder, tokens: torch.Tensor, target: Target) -> torch.Tensor:
    """(B,): the target's log-probability for each row of ``tokens`` (B, T), all laid out as the target's ids
    (a context of T - len(suffix) tokens, then the suffix)."""
    positions = torch.tensor(target.positions(tokens.shape[1] - len(target.suffix)), device=tokens.device)
    h = hidden_states(model, tokens)[:, positions]  # (B, P, C)
    logp = model.lm_head(h).float().log_softmax(dim=-1)  # (B, P, V)
    scored = torch.tensor(target.scored, device=tokens.device)
    return logp.gather(-1, scored.view(1, -1, 1).expand(len(tokens), -1, 1)).squeeze(-1).sum(-1)


@torch.no_grad()
def log_probs_of_contexts(model: Decoder, contexts: list[list[int]], target: Target, start: int,
                          batch_size: int) -> list[float]:
    """The target's log-probability after each of ``contexts`` (lists of token ids of any length, the suffix
    appended to each): rows right-padded (the decoder is causal: padding after a row's last position changes
    nothing before it), each scored at its own positions. An empty context reads ``[start]``."""
    device = _device(model)
    out: list[float] = []
    for i in range(0, len(contexts), batch_size):
        chunk = [list(c) or [start] for c in contexts[i:i + batch_size]]
        rows = [[*c, *target.suffix] for c in chunk]
        width = max(len(r) for r in rows)
        tokens = torch.tensor([r + [start] * (width - len(r)) for r in rows], device=device)
        h = hidden_states(model, tokens)  # (B, T, C)
        scored = torch.tensor(target.scored, device=device)
        for b, c in enumerate(chunk):
            logp = model.lm_head(h[b, target.positions(len(c))]).float().log_softmax(dim=-1)  # (P, V)
            out.append(float(logp.gather(-1, scored.view(-1, 1)).sum()))
    return out


def _device(model: Decoder) -> torch.device:
    return model.rope_cos.device  # a buffer every decoder has (a quantized one has no float embedding weight)
