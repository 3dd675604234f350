"""Augmented copies of a training document: which documents, which operation, all seeded by content."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter

from lmforge.data.augment.config import AugmentConfig
from lmforge.data.augment.rename import rename_locals
from lmforge.data.augment.words import delete_words, insert_words, swap_words
from lmforge.data.document import Document

_WORD_OPERATIONS = {"delete": delete_words, "swap": swap_words, "insert": insert_words}


class Augmenter:
    """``copies(doc)``: the augmented copies of one training document (none for most documents)."""

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.counts: Counter = Counter()  # copies written, by operation

    def _rng(self, doc: Document, salt: str) -> random.Random:
        digest = hashlib.sha256(f"lmforge-augment:{self.seed}:{salt}:".encode() + doc.text.encode("utf-8"))
        return random.Random(digest.digest())

    def chosen(self, doc: Document) -> bool:
        return self._rng(doc, "choose").random() < self.cfg.fraction

    def copies(self, doc: Document) -> list[Document]:
        if not self.cfg.enabled or not self.chosen(doc):
            return []
        out = []
        for k in range(1, self.cfg.copies + 1):
            rng = self._rng(doc, f"copy{k}")
            operation = rng.choice(self.cfg.operations)
            text = rename_locals(doc.text, rng) if operation == "rename" and doc.is_code else None
            if text is None:  # renaming does not apply: a word operation instead
                operation = rng.choice([op for op in self.cfg.operations if op != "rename"] or ["swap"])
                text = _WORD_OPERATIONS[operation](doc.text, rng, self.cfg.word_fraction)
            if text == doc.text or not text.strip():
                continue
            self.counts[operation] += 1
            out.append(dataclasses.replace(doc, id=f"{doc.id}#aug{k}", text=text))
        return out
