"""Helpers shared by the data tests: real documents from the running interpreter's standard library."""

from __future__ import annotations

import random

from lmforge.data.readers import stdlib_files


def stdlib_sample(n: int, seed: int, min_chars: int = 2_000, max_chars: int = 50_000) -> list[str]:
    """``n`` standard library files (as text) of a moderate size, chosen by ``seed``."""
    _, files = stdlib_files()
    rng = random.Random(seed)
    texts: list[str] = []
    for path in rng.sample(files, len(files)):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if min_chars <= len(text) <= max_chars:
            texts.append(text)
            if len(texts) == n:
                break
    return texts
