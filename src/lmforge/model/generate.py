"""Text generation from a Decoder: greedy, temperature, top-k and nucleus (top-p) sampling.

The KV-cache path feeds one new token per step; ``use_cache=False`` recomputes the whole sequence
every step and is kept as the reference the cached path is tested against.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.model.decoder import Decoder, KVCache


def generate(
    model: Decoder,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> list[int]:
    """The new tokens after ``prompt_ids`` (not the prompt itself).

    ``temperature=0`` is greedy decoding. Sampling draws from a CPU ``torch.Generator`` seeded with
    ``seed``, so the same call gives the same tokens. Generation stops after ``max_new_tokens`` or
    after ``eos_id`` is produced (the eos token is then the last one returned).
    """
    dims = model.dims
    use_cache = use_cache and hasattr(model, "forward_cached")  # an ensemble recomputes the sequence
    _check_arguments(dims.context_length, dims.vocab_size, prompt_ids, max_new_tokens, temperature, top_k, top_p)
    if max_new_tokens == 0:
        return []
    weight = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)  # draws on the CPU: the same seed samples alike on any device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            tokens = torch.tensor([prompt_ids], dtype=torch.long, device=weight.device)  # (1, T)
            if use_cache:
                cache = KVCache.allocate(dims, 1, len(prompt_ids) + max_new_tokens, weight.device, weight.dtype)
                logits = model.forward_cached(tokens, cache, start_pos=0)[0, -1]  # (V,)
            else:
                logits = model(tokens)[0, -1]
            new_ids: list[int] = []
            while True:
                next_id = sample_next_token(logits, temperature, top_k, top_p, generator)
                new_ids.append(next_id)
                if next_id == eos_id or len(new_ids) == max_new_tokens:
                    return new_ids
                next_token = torch.tensor([[next_id]], dtype=torch.long, device=weight.device)  # (1, 1)
                if use_cache:
                    position = len(prompt_ids) + len(new_ids) - 1
                    logits = model.forward_cached(next_token, cache, start_pos=position)[0, -1]
                else:
                    tokens = torch.cat((tokens, next_token), dim=1)
                    logits = model(tokens)[0, -1]
    finally:
        model.train(was_training)


def sample_next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                      generator: torch.Generator) -> int:
    """One token id from logits (V,): argmax when temperature is 0, else a draw from the filtered softmax."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first is always kept)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def _check_arguments(context_length: int, vocab_size: int, prompt_ids: list[int], max_new_tokens: int,
                     temperature: float, top_k: int | None, top_p: float | None) -> None:
    if len(prompt_ids) == 0:
        raise LmforgeError("the prompt is empty: generation needs at least one prompt token")
    if max_new_tokens < 0:
        raise LmforgeError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if len(prompt_ids) + max_new_tokens > context_length:
        raise LmforgeError(f"prompt of {len(prompt_ids)} tokens + max_new_tokens {max_new_tokens} "
                           f"exceeds the model context length {context_length}")
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise LmforgeError(f"prompt token id {bad[0]} is outside the vocabulary (size {vocab_size})")
    if temperature < 0:
        raise LmforgeError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise LmforgeError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise LmforgeError(f"top_p must be in (0, 1], got {top_p}")
