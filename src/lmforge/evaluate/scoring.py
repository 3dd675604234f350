"""Exact log-likelihood scoring of a Decoder, as lm-evaluation-harness defines it.

- ``loglikelihoods``: (context, continuation) requests -> the summed log-probability of the continuation
  tokens, their count and whether greedy decoding would have produced them (lm-eval's ``loglikelihood``).
- ``rolling_loglikelihood``: every token of a document predicted exactly once (lm-eval's
  ``loglikelihood_rolling``), with a chosen stride between windows.
- ``greedy_continuations``: greedy generation cut at the first stop string (lm-eval's ``generate_until``).

Tokenization follows lm-eval's ``_encode_pair``: trailing whitespace of the context moves to the
continuation, then ``continuation = encode(context + continuation)[len(encode(context)):]`` and the model
reads ``encode(context) + continuation``. An empty context (or one of whitespace only, once that whitespace
has moved) is the end-of-text token. A
sequence longer than the model's context is truncated from the left, keeping the continuation whole
(``(context + continuation)[-(context_length + 1):][:-1]`` is the input, as in lm-eval).

Batching: requests whose model input is a prefix of another request's input (identical inputs included:
multiple choice with one-token answers; choices that extend one another) are read off that one forward
pass, since causal attention makes the logits at a position depend only on the tokens up to it. Rows
that share their context (several multi-token choices after one question) are packed into one row: the
context once, then each row's own tokens at the positions they would have alone, an attention mask
keeping each to the context and itself (``Decoder.forward_packed``). Packed rows are sorted by length
(longest first), padded on the right and run ``batch_size`` at a time, the LM head only at the scored
positions. Without sharing (``share_context=False``), every row is a plain padded forward (padding sits
after every real token, so it changes no real position). The model must already be on ``device``. Log-softmax is taken in fp32
(fp64 for an fp64 model) whatever the model's dtype; results come back in request order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from tokenizers import Tokenizer

from lmforge.data.tokenizer import EOS_ID, eos_id_of
from lmforge.errors import LmforgeError
from lmforge.model.decoder import Decoder
from lmforge.model.generate import generate

WIDTH_STEP = 8  # packed rows are padded to a multiple of this many tokens


class Score(NamedTuple):
    """One (context, continuation) request: log P(continuation | context), its token count, and whether
    every continuation token is the argmax of the model's prediction."""

    logprob: float
    n_tokens: int
    is_greedy: bool


class RollingScore(NamedTuple):
    """A whole token sequence: the summed log-probability of every token and how many were predicted."""

    logprob: float
    n_tokens: int


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) by lm-eval's ``_encode_pair`` rule (see the module docstring)."""
    if continuation == "":
        raise LmforgeError(f"empty continuation for context {context[-40:]!r}: there is nothing to score")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context == "":
        return [end_of_text(tokenizer)], _encode(tokenizer, continuation)
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def loglikelihoods(model: Decoder, tokenizer: Tokenizer, requests: Sequence[tuple[str, str]],
                   batch_size: int = 8, device: torch.device | str | None = None,
                   share_context: bool = True) -> list[Score]:
    """A Score per (context, continuation) request, in request order (``share_context``: see
    ``score_token_pairs``)."""
    pairs = []
    for i, (context, continuation) in enumerate(requests):
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not continuation_ids:
            raise LmforgeError(f"request {i}: the continuation {continuation!r} encodes to no tokens")
        pairs.append((context_ids, continuation_ids))
    return score_token_pairs(model, pairs, batch_size, device, share_context=share_context)


def score_token_pairs(model: Decoder, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 8,
                      device: torch.device | str | None = None, max_len: int | None = None,
                      share_context: bool = True) -> list[Score]:
    """The Score of each (context ids, continuation ids) pair, the model reading at most ``max_len``
    tokens (default: its context length), the context truncated from the left.

    With ``share_context``, rows that read the same tokens before their first scored position (several
    choices after one context) run as one packed row (``_score_packed``); otherwise (and for a model
    without ``forward_packed``) every row is a full forward."""
    if batch_size < 1:
        raise LmforgeError(f"batch_size must be >= 1, got {batch_size}")
    max_len = model.dims.context_length if max_len is None else max_len
    inputs: list[tuple[int, ...]] = []  # per request: the tokens the model reads
    targets: list[list[int]] = []  # per request: the continuation tokens, predicted at the last positions
    for i, (context_ids, continuation_ids) in enumerate(pairs):
        if not continuation_ids:
            raise LmforgeError(f"request {i}: empty continuation: there is nothing to score")
        if not context_ids:
            raise LmforgeError(f"request {i}: empty context: the first continuation token needs a token before it")
        if len(continuation_ids) > max_len:
            raise LmforgeError(f"request {i}: the continuation alone is {len(continuation_ids)} tokens, longer "
                               f"than the context length {max_len}")
        window = (list(context_ids) + list(continuation_ids))[-(max_len + 1):]
        inputs.append(tuple(window[:-1]))
        targets.append(list(continuation_ids))

    # host[i]: the request whose input has request i's input as a prefix (lexicographic order puts a
    # sequence right before the sequences it is a prefix of); i is read off the host's row
    by_tokens = sorted(range(len(inputs)), key=lambda i: inputs[i])
    host = list(range(len(inputs)))
    for a, b in zip(reversed(by_tokens[:-1]), reversed(by_tokens[1:])):
        if inputs[b][:len(inputs[a])] == inputs[a]:
            host[a] = host[b]
    rows = sorted(set(host), key=lambda i: (-len(inputs[i]), inputs[i]))  # longest first: memory errors early
    guests: dict[int, list[int]] = {}
    for i, h in enumerate(host):
        guests.setdefault(h, []).append(i)

    device = torch.device(device) if device is not None else next(model.parameters()).device
    scores: list[Score | None] = [None] * len(inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if share_context and hasattr(model, "forward_packed"):
                _score_packed(model, inputs, targets, rows, guests, scores, batch_size, device)
            else:
                for start in range(0, len(rows), batch_size):
                    batch = rows[start:start + batch_size]
                    logprobs = _log_softmax(model(_right_padded([inputs[h] for h in batch], device)))  # (B, T, V)
                    for r, h in enumerate(batch):
                        for i in guests[h]:
                            n = len(targets[i])
                            scores[i] = _score(logprobs[r, len(inputs[i]) - n:len(inputs[i])], targets[i])
    finally:
        model.train(was_training)
    return scores  # type: ignore[return-value]


def _score_packed(model: Decoder, inputs: list[tuple[int, ...]], targets: list[list[int]], rows: list[int],
                  guests: dict[int, list[int]], scores: list, batch_size: int, device: torch.device) -> None:
    """Host rows that read the same tokens up to the one before their first continuation token (several
    choices after one context) become one packed row: that prefix once, then each host's remaining tokens
    at the positions they would have alone, attending to the prefix and to themselves only. Packed rows run
    ``batch_size`` at a time (longest first, right-padded; padding attends to itself alone), and the LM head
    runs only at the positions whose predictions are scored."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for h in rows:
        groups.setdefault(inputs[h][:len(inputs[h]) - len(targets[h]) + 1], []).append(h)
    packed = []  # (tokens, positions, segment of each token, {host: offset of its own tokens})
    for prefix, members in groups.items():
        tokens, positions, segments, offsets = list(prefix), list(range(len(prefix))), [0] * len(prefix), {}
        for seg, h in enumerate(members, start=1):
            own = inputs[h][len(prefix):]
            offsets[h] = len(tokens)
            tokens += own
            positions += range(len(prefix), len(prefix) + len(own))
            segments += [seg] * len(own)
        packed.append((tokens, positions, segments, offsets, len(prefix)))
    # rows are padded to their length rounded up to WIDTH_STEP and batched only with rows of that width: a
    # row's arithmetic is then the same whatever the batch size (up to the matmul's own blocking)
    by_width: dict[int, list] = {}
    for p in packed:
        by_width.setdefault(-(-len(p[0]) // WIDTH_STEP) * WIDTH_STEP, []).append(p)
    batches = [(width, rows_[i:i + batch_size]) for width, rows_ in sorted(by_width.items(), reverse=True)
               for i in range(0, len(rows_), batch_size)]
    for width, batch in batches:
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        positions = torch.zeros(len(batch), width, dtype=torch.long)
        segments = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: padding
        for r, (t, pos, seg, _, _) in enumerate(batch):
            tokens[r, :len(t)], positions[r, :len(t)], segments[r, :len(t)] = (torch.tensor(x) for x in (t, pos, seg))
        index = torch.arange(width)
        same = segments[:, None, :] == segments[:, :, None]  # (B, query, key)
        mask = (index[None, None, :] <= index[None, :, None]) & ((segments[:, None, :] == 0) | same)
        mask |= torch.eye(width, dtype=torch.bool)[None]  # padding attends to itself (no empty softmax row)
        hidden = model.forward_packed(tokens.to(device), positions.to(device), mask[:, None].to(device))  # (B, T, C)
        picks, spans = [], []  # packed (row, position) of every scored prediction; per request its span in picks
        for r, (_, _, _, offsets, prefix_len) in enumerate(batch):
            for h, offset in offsets.items():
                for i in guests[h]:
                    n = len(targets[i])
                    at = [p if p < prefix_len else offset + p - prefix_len
                          for p in range(len(inputs[i]) - n, len(inputs[i]))]
                    spans.append((i, len(picks), n))
                    picks += [(r, p) for p in at]
        where = torch.tensor(picks, device=device)
        logprobs = _log_softmax(model.lm_head(hidden[where[:, 0], where[:, 1]]))  # (picks, V)
        for i, begin, n in spans:
            scores[i] = _score(logprobs[begin:begin + n], targets[i])


def _right_padded(sequences: list[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    """(B, longest) token ids, padded on the right with 0: causal attention never lets a real position
    see the padding after it."""
    tokens = torch.zeros(len(sequences), max(len(s) for s in sequences), dtype=torch.long)
    for r, seq in enumerate(sequences):
        tokens[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    return tokens.to(device)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """In fp32 at least (bf16/fp16 logits are upcast; fp64 stays fp64)."""
    return (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(dim=-1)


def _score(rows: torch.Tensor, target_ids: list[int]) -> Score:
    """Score of ``target_ids`` predicted by the log-probability rows (n, V), one per target."""
    target = torch.tensor(target_ids, device=rows.device)
    picked = rows.gather(1, target[:, None])[:, 0]  # (n,)
    is_greedy = bool((rows.argmax(dim=-1) == target).all())
    return Score(float(picked.double().sum()), len(target_ids), is_greedy)


def rolling_windows(token_ids: Sequence[int], prefix_id: int, window: int,
                    stride: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's ``get_rolling_token_windows`` + ``make_disjoint_window`` with ``max_seq_len=window`` and
    ``context_len = window - stride + 1``: (context ids, ids to predict) pairs, every token predicted once.

    The first window predicts the first ``window`` tokens after ``prefix_id``; each later one predicts the
    next ``stride`` tokens (fewer at the end), reading the ``window`` tokens before the last of them."""
    if not 1 <= stride <= window:
        raise LmforgeError(f"stride must be in [1, {window}], got {stride}")
    tokens = list(token_ids)
    if not tokens:
        return []
    first = min(window, len(tokens))
    pairs = [([prefix_id], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, stride)
        end = predicted + n
        pairs.append((tokens[max(0, end - window - 1):end - n], tokens[end - n:end]))
        predicted = end
    return pairs


def rolling_loglikelihood(model: Decoder, token_ids: Sequence[int], context_length: int | None = None,
                          device: torch.device | str | None = None, *, stride: int = 1, batch_size: int = 8,
                          prefix_id: int = EOS_ID) -> RollingScore:
    """log P(token_ids) with every token predicted exactly once, after ``prefix_id`` (end-of-text).

    Windows read at most ``context_length`` tokens (default and maximum: the model's). ``stride=1``
    gives every token the longest context allowed (one window per token after the first window);
    ``stride=context_length`` is lm-eval's ``loglikelihood_rolling`` (disjoint windows: the first token
    of each window after the first sees one token). Strides in between trade work for context: each
    token then sees at least ``context_length - stride + 1`` tokens."""
    model_len = model.dims.context_length
    context_length = model_len if context_length is None else context_length
    if not 1 <= context_length <= model_len:
        raise LmforgeError(f"context_length must be in [1, {model_len}] (the model's), got {context_length}")
    pairs = rolling_windows(token_ids, prefix_id, context_length, stride)
    scores = score_token_pairs(model, pairs, batch_size, device, max_len=context_length)
    return RollingScore(sum(s.logprob for s in scores), sum(s.n_tokens for s in scores))


def greedy_continuations(model: Decoder, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int,
                         stop: str | Sequence[str] | None = None) -> list[str]:
    """Greedy generation (temperature 0, KV cache) for each prompt, the text cut before the first
    occurrence of any stop string. Generation also ends at the end-of-text token; a prompt too long for
    ``max_new_tokens`` more tokens is truncated from the left, as lm-eval does."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(s == "" for s in stops):
        raise LmforgeError("an empty stop string would cut every continuation to nothing")
    context_length = model.dims.context_length
    if max_new_tokens >= context_length:
        raise LmforgeError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the context length "
                           f"{context_length}")
    eos = end_of_text(tokenizer)
    texts = []
    for prompt in prompts:
        prompt_ids = _encode(tokenizer, prompt) or [eos]
        prompt_ids = prompt_ids[-(context_length - max_new_tokens):]
        new_ids = generate(model, prompt_ids, max_new_tokens, temperature=0.0, eos_id=eos)
        text = tokenizer.decode(new_ids)  # the end-of-text token is special: decode skips it
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
        texts.append(text[:cut])
    return texts


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def end_of_text(tokenizer: Tokenizer) -> int:
    """The id a scored text follows and generation stops at: the tokenizer's end-of-text."""
    eos = eos_id_of(tokenizer)
    return EOS_ID if eos is None else eos
