"""Word-level operations (EDA's random deletion, swap and insertion) that keep the text's layout."""

from __future__ import annotations

import random
import re

_SPLIT = re.compile(r"(\s+)")


def _pieces(text: str) -> tuple[list[str], list[int]]:
    """Alternating pieces (separators and words) and the indices of the word pieces."""
    pieces = _SPLIT.split(text)
    return pieces, [i for i, piece in enumerate(pieces) if piece and not piece.isspace()]


def delete_words(text: str, rng: random.Random, fraction: float) -> str:
    pieces, words = _pieces(text)
    if len(words) < 2:
        return text
    count = min(len(words) - 1, max(1, round(fraction * len(words))))
    for i in sorted(rng.sample(words, count), reverse=True):
        del pieces[i:i + 2]  # the word and the whitespace after it
    return "".join(pieces)


def swap_words(text: str, rng: random.Random, fraction: float) -> str:
    pieces, words = _pieces(text)
    if len(words) < 2:
        return text
    for _ in range(max(1, round(fraction * len(words)))):
        i, j = rng.sample(words, 2)
        pieces[i], pieces[j] = pieces[j], pieces[i]
    return "".join(pieces)


def insert_words(text: str, rng: random.Random, fraction: float) -> str:
    pieces, words = _pieces(text)
    if not words:
        return text
    vocabulary = [pieces[i] for i in words]
    for _ in range(max(1, round(fraction * len(words)))):
        at = rng.choice(words)
        pieces[at] = f"{pieces[at]} {rng.choice(vocabulary)}"
    return "".join(pieces)
