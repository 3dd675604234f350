"""High-entropy secrets: API keys, passwords and tokens that match no known key format.

A candidate is a run of token characters ([A-Za-z0-9+/_-], with up to two "=" of padding), found with
numpy (a regex scan of the same runs is ~5x slower). It is a secret when it looks random:

- after a secret keyword on its line (``api_key = "``, ``token:``, ``Bearer ``, ``password=``): at least
  16 characters of two character classes (upper case, lower case, digits), 3 bits of entropy per
  character, and not made of words: identifiers like ``HTTPPasswordMgrWithPriorAuth`` are mostly
  capitalised or lower-case words, a random token rarely (under 0.2% of random tokens reach 75%);
- anywhere else: at least ``min_length`` characters mixing all three classes, at least ``min_entropy``
  bits per character, at most half of it word-like, and changes between the classes at a random
  string's rate.

Never a secret: UUIDs, hex strings outside a keyword context (hashes), base64 that decodes to readable
text, and lines of base64 next to other such lines (encoded data, not keys).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Iterator

import numpy as np

_TOKEN_BYTES = np.zeros(256, dtype=bool)
_TOKEN_BYTES[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")] = True
_KEYWORD_MIN_LENGTH = 16
_KEYWORD_MIN_ENTROPY = 3.0
_KEYWORD_MAX_WORDLIKE = 0.75  # share of characters in word-like runs ([A-Z]?[a-z]{2,})
_BARE_MAX_WORDLIKE = 0.5
_BARE_MIN_CLASS_CHANGES = 0.45  # share of neighbouring characters of different classes; random base62: ~0.62
_KEYWORD_BEFORE = re.compile(
    r"(?i)(?:key|token|secret|passw(?:or)?d|pwd|auth\w*|bearer|credential|api|access|private|signature|session"
    r"|cookie)[\w.-]*[\"']?\s*(?:[:=]{1,2}|=>|\s)\s*[\"'`]?$")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_DIGIT = re.compile(r"[0-9]")
_SEPARATORS = re.compile(r"[/_+=-]")
_WORDLIKE = re.compile(r"[A-Z]?[a-z]{2,}")
_BASE64_LINE = re.compile(r"\s*[bru]?[\"']?[A-Za-z0-9+/=]{32,}[\"']?[,)\\n]*\s*")


def shannon_entropy(token: str) -> float:
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def class_change_rate(token: str) -> float:
    """Share of neighbouring characters of different classes (upper, lower, digit), separators removed."""
    core = _SEPARATORS.sub("", token)
    if len(core) < 2:
        return 0.0
    classes = [1 if c.isupper() else 2 if c.islower() else 3 for c in core]
    return sum(a != b for a, b in zip(classes, classes[1:])) / (len(core) - 1)


def wordlike_fraction(token: str) -> float:
    """Share of characters in runs that look like words: an optional capital, then lower case letters."""
    return sum(len(m) for m in _WORDLIKE.findall(token)) / max(len(token), 1)


def find_secrets(text: str, *, min_length: int, min_entropy: float) -> Iterator[tuple[int, int, str]]:
    for start, end in _token_runs(text, min(min_length, _KEYWORD_MIN_LENGTH)):
        token = text[start:end]
        if _character_classes(token) < 2:
            continue  # words and snake_case identifiers: the common case, rejected cheaply
        line_start = text.rfind("\n", 0, start) + 1
        keyword = bool(_KEYWORD_BEFORE.search(text, max(line_start, start - 48), start))
        if keyword:
            confirmed = _keyword_secret(token)
        else:
            confirmed = len(token) >= min_length and _bare_secret(token, min_entropy)
            confirmed = confirmed and not _in_base64_block(text, line_start, start, end)
        if confirmed and not _encoded_text(token):
            yield start, end, "secret"


def _token_runs(text: str, min_length: int) -> Iterator[tuple[int, int]]:
    """(start, end) character offsets of token runs at least ``min_length`` long, with "=" padding."""
    raw = text.encode("utf-8")
    codes = np.frombuffer(raw, dtype=np.uint8)
    edges = np.flatnonzero(np.diff(_TOKEN_BYTES[codes], prepend=False, append=False))
    starts, ends = edges[::2], edges[1::2]
    long = ends - starts >= min_length
    if not long.any():
        return
    # byte offset -> character offset: count the bytes that start a character (not 0b10xxxxxx)
    char_at = None if len(raw) == len(text) else np.concatenate(([0], np.cumsum((codes & 0xC0) != 0x80)))
    for start, end in zip(starts[long].tolist(), ends[long].tolist()):
        for _ in range(2):  # base64 padding
            if end < len(raw) and raw[end] == 0x3D:
                end += 1
        if char_at is not None:
            start, end = int(char_at[start]), int(char_at[end])
        yield start, end


def _character_classes(token: str) -> int:
    """How many of upper case, lower case and digits ``token`` has."""
    return (token.lower() != token) + (token.upper() != token) + (_DIGIT.search(token) is not None)


def _keyword_secret(token: str) -> bool:
    core = token.rstrip("=")
    if len(core) < _KEYWORD_MIN_LENGTH or _UUID.fullmatch(core):
        return False
    return (_character_classes(core) >= 2 and shannon_entropy(core) >= _KEYWORD_MIN_ENTROPY
            and wordlike_fraction(core) < _KEYWORD_MAX_WORDLIKE)


def _bare_secret(token: str, min_entropy: float) -> bool:
    core = token.rstrip("=")
    if _HEX.fullmatch(core.replace("-", "")):
        return False
    if _character_classes(core) < 3:
        return False
    return (shannon_entropy(core) >= min_entropy and wordlike_fraction(core) <= _BARE_MAX_WORDLIKE
            and class_change_rate(core) >= _BARE_MIN_CLASS_CHANGES)


def _encoded_text(token: str) -> bool:
    """Whether ``token`` is base64 of readable text (test data, MIME), not random key material."""
    core = token.rstrip("=")
    if len(core) < 16 or len(core) % 4 == 1:
        return False
    alphabet = b"-_" if ("-" in core or "_" in core) else None
    try:
        raw = base64.b64decode(core + "=" * (-len(core) % 4), altchars=alphabet, validate=alphabet is None)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    return sum(c.isprintable() or c in "\n\r\t" for c in decoded) >= 0.9 * len(decoded)


def _in_base64_block(text: str, line_start: int, start: int, end: int) -> bool:
    """A token that fills its line, next to another such line, is encoded data (MIME, images), not a key."""
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    if not _BASE64_LINE.fullmatch(text, line_start, line_end):
        return False
    previous_start = text.rfind("\n", 0, max(line_start - 1, 0)) + 1
    next_end = text.find("\n", line_end + 1)
    next_end = len(text) if next_end < 0 else next_end
    neighbours = [(previous_start, line_start - 1)] if line_start > 0 else []
    if line_end < len(text):
        neighbours.append((line_end + 1, next_end))
    return any(hi - lo >= 32 and _BASE64_LINE.fullmatch(text, lo, hi) for lo, hi in neighbours)
