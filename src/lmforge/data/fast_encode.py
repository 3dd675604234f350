"""Encoding documents fast and exactly: a byte-level BPE ``tokenizer.json`` as a ``tiktoken`` encoding.

``tiktoken`` encodes byte-level BPE several times faster than ``tokenizers`` (its pre-tokenizer and merge
loop run in Rust without per-token Python objects, in threads that drop the GIL). ``tokenizer.json`` stays
the format users see; it is converted here only when the result is the same ids ``tokenizers`` gives, as
``read_tokenizer`` loads it (``encode_special_tokens``: a literal ``<|endoftext|>`` in text is text) and as
packing calls it (``add_special_tokens=False``). Anything else falls back to ``tokenizers``, with the reason.

Why rank-based merging (tiktoken) equals merge-list BPE (tokenizers) when the checks below pass: tiktoken
repeatedly merges the adjacent pair whose concatenation has the lowest id; tokenizers the pair that comes
first in ``merges``. With ids increasing in merge order, both pick the same pair as long as tiktoken never
joins two tokens whose concatenation ``T`` is a token made by a *different* merge. Within ``T``'s bytes,
tiktoken's steps before it forms ``T`` are those it takes on ``T``'s bytes alone (no merge reaching outside
a span that ends up one token ever touched it), so checking, for every merge ``(A, B) -> T``, that tiktoken
on ``T``'s bytes with ranks below ``T``'s stops at exactly ``[A, B]`` rules out every other split of ``T``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# tokenizers' ByteLevel(use_regex=True) split, verbatim (tokenizers/src/pre_tokenizers/byte_level.rs), rather
# than tiktoken's GPT-2 pattern, which is written differently (possessive, `\s++$|\s+(?!\S)|\s`)
BYTE_LEVEL_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte as the printable character byte-level BPE writes it as (its vocab's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class Conversion:
    """A tiktoken encoding giving exactly tokenizers' ids, or None and why not."""

    encoding: object | None  # tiktoken.Encoding
    reason: str | None = None


def convert(tokenizer_json: dict) -> Conversion:
    """``tokenizer_json`` (a parsed ``tokenizer.json``) as an exactly equivalent ``tiktoken.Encoding``."""
    reason = _unsupported_pipeline(tokenizer_json)
    if reason:
        return Conversion(None, reason)
    model = tokenizer_json["model"]
    specials = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens") or []}
    ranks_or_reason = _mergeable_ranks(model["vocab"], model["merges"], specials)
    if isinstance(ranks_or_reason, str):
        return Conversion(None, ranks_or_reason)
    import tiktoken

    specials = {text: i for text, i in specials.items() if i not in set(ranks_or_reason.values())}
    return Conversion(tiktoken.Encoding("lmforge", pat_str=BYTE_LEVEL_SPLIT, mergeable_ranks=ranks_or_reason,
                                        special_tokens=specials))


def _unsupported_pipeline(tj: dict) -> str | None:
    """Why the tokenizer's steps around its BPE are not tiktoken's (None: they are)."""
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        return f"model is {model.get('type')!r}, not BPE"
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "BPE with dropout or subword prefix/suffix"
    normalizer = tj.get("normalizer")
    if normalizer is not None and normalizer != {"type": "Sequence", "normalizers": []}:
        return f"has a normalizer ({normalizer.get('type')})"
    pre = tj.get("pre_tokenizer")
    if isinstance(pre, dict) and pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    if not (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)):
        return f"pre-tokenizer is {_describe(pre)}, not ByteLevel with its split regex"
    if pre.get("add_prefix_space", True):  # tokenizers' default when the key is absent
        return "ByteLevel pre-tokenizer adds a prefix space"
    if tj.get("truncation") is not None or tj.get("padding") is not None:
        return "truncation or padding is set"
    ordinary = [t["content"] for t in tj.get("added_tokens") or [] if not t.get("special")]
    if ordinary:  # these are split out of text even with encode_special_tokens
        return f"{len(ordinary)} added token(s) that are not special, e.g. {ordinary[0]!r}"
    return None


def _describe(pre) -> str:
    if not isinstance(pre, dict):
        return repr(pre)
    if pre.get("type") == "Sequence":
        return "Sequence[" + ", ".join(p.get("type", "?") for p in pre.get("pretokenizers", [])) + "]"
    return f"{pre.get('type')}(use_regex={pre.get('use_regex')})" if pre.get("type") == "ByteLevel" else pre.get("type")


def _mergeable_ranks(vocab: dict[str, int], merges: list, specials: dict[str, int]) -> dict[bytes, int] | str:
    """tiktoken's ranks (token bytes -> id) for a byte-level BPE, or why its merges are not rank-ordered."""
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for ch, b in to_byte.items():
        if ch not in vocab:
            return f"vocabulary lacks the byte symbol {ch!r} (byte {b})"
        ranks[bytes([b])] = vocab[ch]
    pairs = []
    last_id = max(ranks.values())
    for merge in merges:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = left + right
        if token not in vocab or left not in vocab or right not in vocab:
            return f"merge {left!r} + {right!r} names a token not in the vocabulary"
        if vocab[token] <= last_id:
            return f"token ids do not increase in merge order (at {token!r})"
        last_id = vocab[token]
        try:
            raw = [bytes(to_byte[c] for c in s) for s in (left, right)]
        except KeyError:
            return f"merge {left!r} + {right!r} is not byte-level"
        ranks[raw[0] + raw[1]] = vocab[token]
        pairs.append((left, right, *raw))
    made = set(ranks.values())
    stray = [t for t, i in vocab.items() if i not in made and specials.get(t) != i]
    if stray:
        return f"{len(stray)} vocabulary token(s) no merge makes, e.g. {stray[0]!r}"
    for left, right, raw_left, raw_right in pairs:
        if _merge_parts(ranks, raw_left + raw_right, ranks[raw_left + raw_right]) != [raw_left, raw_right]:
            return f"merge {left!r} + {right!r} is not the split its rank order gives"
    return ranks


def _merge_parts(ranks: dict[bytes, int], piece: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's byte-pair merge of ``piece`` using only ranks below ``max_rank`` (lowest rank first,
    leftmost on ties): the parts it stops at."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, at = max_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], max_rank)
            if rank < best:
                best, at = rank, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


class DocumentEncoder:
    """Encodes lists of documents into flat token arrays with ``eos_id`` after each document, in background
    threads: ``submit(texts)`` starts a list and returns a function that waits for its array, so the caller
    reads the next list meanwhile. ``route`` names the library that encodes ("tiktoken" or "tokenizers");
    ``reason`` says why tiktoken is not used (None when it is)."""

    def __init__(self, tokenizer_path: Path, tokenizer, eos_id: int, dtype: np.dtype, threads: int,
                 force: str = "auto"):
        if force not in ("auto", "tokenizers"):
            raise ValueError(f"encoder must be 'auto' or 'tokenizers', got {force!r}")
        if force == "tokenizers":
            conversion = Conversion(None, "asked for")
        elif not getattr(tokenizer, "encode_special_tokens", False):
            conversion = Conversion(None, "special tokens in text are encoded as special tokens")
        else:
            try:
                conversion = convert(json.loads(Path(tokenizer_path).read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                conversion = Conversion(None, f"tokenizer.json not convertible ({type(e).__name__}: {e})")
        self.route = "tokenizers" if conversion.encoding is None else "tiktoken"
        self.reason = conversion.reason
        self._eos = np.array([eos_id], dtype=np.uint32)
        self._dtype = dtype
        self._encoding, self._tokenizer = conversion.encoding, tokenizer
        # tiktoken: one document per task, each dropping the GIL; tokenizers: one list per task, which its
        # own thread pool (rayon) spreads over the cores
        self._pool = ThreadPoolExecutor(max(1, threads) if self._encoding else 1, thread_name_prefix="encode")

    def submit(self, texts: list[str]) -> Callable[[], np.ndarray]:
        if self._encoding is None:
            return self._pool.submit(self._tokenizers_ids, texts).result
        # no special token allowed or checked for: encode_ordinary's ids, as arrays (no lists of ints)
        futures = [self._pool.submit(self._encoding.encode_to_numpy, text, disallowed_special=()) for text in texts]
        return lambda: self._join([f.result() for f in futures])

    def _tokenizers_ids(self, texts: list[str]) -> np.ndarray:
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)  # no offsets
        return self._join([np.array(enc.ids, dtype=np.uint32) for enc in encode(texts, add_special_tokens=False)])

    def _join(self, arrays: list[np.ndarray]) -> np.ndarray:
        if not arrays:
            return np.empty(0, dtype=self._dtype)
        return np.concatenate([part for tokens in arrays for part in (tokens, self._eos)]).astype(self._dtype)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DocumentEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
