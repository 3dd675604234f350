"""Word splitting and duplicate counting shared by the prose rule sets (as in datatrove's text helpers)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# Words and runs of punctuation, like a word tokenizer for English: "it's 3.5 kg..." ->
# ["it", "'", "s", "3", ".", "5", "kg", "..."]. (Hand-written: nltk's tokenizer needs a model download.)
_WORD = re.compile(r"\w+|[^\w\s]+")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text)


def is_symbol_word(word: str) -> bool:
    """A token made only of punctuation and symbols."""
    return not any(c.isalnum() for c in word)


def find_duplicates(items: Iterable[str]) -> tuple[int, int]:
    """(number of items seen before, characters in them)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def top_n_gram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram (its length times its count), 0 without n-grams."""
    grams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def duplicated_n_gram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier one, a repeat skipping its n words (Gopher)."""
    seen: set[str] = set()
    repeated = i = 0
    while i < len(words) - n + 1:
        gram = "".join(words[i:i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated
