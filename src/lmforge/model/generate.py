"""Autoregressive sampling: temperature, top-k, top-p (nucleus), with or without the KV cache."""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.model.decoder import Decoder, KVCache


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with probability >= top_p.

    logits: (V,). The most likely token always survives.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
        drop_sorted = mass_before >= top_p
        drop_sorted[0] = False
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    return logits


def _pick(logits: torch.Tensor, temperature: float, top_k, top_p, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    filtered = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(filtered, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.inference_mode()
def generate(model: Decoder, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None, seed: int = 0,
             use_cache: bool = True) -> list[int]:
    """Continue ``prompt_ids``; returns only the new tokens (stopping after ``eos_id`` if it is sampled).

    temperature 0 is greedy decoding. Sampling is reproducible for a given seed. ``use_cache=False``
    recomputes the whole sequence every step (the reference the cached path must equal).
    """
    context = model.dims.context_length
    if not prompt_ids:
        raise LmforgeError("prompt: the prompt is empty (it must encode to at least one token)")
    if len(prompt_ids) + max_new_tokens > context:
        raise LmforgeError(
            f"prompt of {len(prompt_ids)} tokens + max_new_tokens {max_new_tokens} exceeds the model context "
            f"length {context}"
        )
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    new_ids: list[int] = []
    cache = KVCache.allocate(model.dims, 1, len(prompt_ids) + max_new_tokens, device,
                             next(model.parameters()).dtype) if use_cache else None
    position = 0
    for _ in range(max_new_tokens):
        if cache is not None:
            logits = model.forward_cached(tokens[:, position:], cache, position)  # (1, t, V)
            position = tokens.shape[1]
        else:
            logits = model(tokens)  # (1, T, V)
        next_id = _pick(logits[0, -1], temperature, top_k, top_p, generator)
        new_ids.append(next_id)
        if eos_id is not None and next_id == eos_id:
            break
        tokens = torch.cat([tokens, torch.tensor([[next_id]], device=device)], dim=1)
    return new_ids
