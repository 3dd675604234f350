"""The train/validation split: by a seeded hash of each document's text, written as it streams.

A document goes to val when ``split_score(text, seed) < val_fraction``. The train document with the
lowest score and the val document with the highest are held back and written last: if one split would
be empty, the other split's held document moves over. That keeps at least one document in each split
(from 2 documents on) while staying independent of input order. Training documents get their
augmented copies (``Augmenter``) right after them; validation documents never do.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lmforge.core.atomic import atomic_open
from lmforge.data.augment.apply import Augmenter
from lmforge.data.document import Document, utf8_len

SPLITS = ("train", "val")
_LENGTH_BINS = 32


@dataclass
class SplitStats:
    documents: int = 0
    bytes: int = 0
    characters: int = 0


def split_score(text: str, seed: int) -> float:
    """A number in [0, 1) from a seed-salted hash of the text: the split depends on content, not order."""
    hasher = hashlib.sha256(f"lmforge-split:{seed}:".encode())
    hasher.update(text.encode("utf-8"))
    return int.from_bytes(hasher.digest()[:8], "big") / 2**64


class SplitWriter:
    """``with SplitWriter(out, seed, 0.05, augmenter) as w: w.write(doc)``: the files appear on success."""

    def __init__(self, out_dir: Path, seed: int, val_fraction: float, augmenter: Augmenter) -> None:
        self.out_dir, self.seed, self.val_fraction, self.augmenter = out_dir, seed, val_fraction, augmenter
        self.splits = {name: SplitStats() for name in SPLITS}
        self.lengths = [0] * _LENGTH_BINS  # UTF-8 sizes of the documents written (augmented copies not)
        self._held: dict[str, tuple[float, Document] | None] = {name: None for name in SPLITS}
        self._files: dict[str, TextIO] = {}
        self._stack = ExitStack()

    def __enter__(self) -> SplitWriter:
        for name in SPLITS:
            self._files[name] = self._stack.enter_context(atomic_open(self.out_dir / f"{name}.jsonl", encoding="utf-8"))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._flush_held()
        return self._stack.__exit__(exc_type, exc, tb)

    def write(self, doc: Document) -> None:
        score = split_score(doc.text, self.seed)
        name = "val" if score < self.val_fraction else "train"
        current = self._held[name]
        more_extreme = current is None or (score < current[0] if name == "train" else score > current[0])
        if more_extreme:
            self._held[name] = (score, doc)
            if current is None:
                return
            doc = current[1]
        self._write(name, doc)

    def _flush_held(self) -> None:
        held = self._held
        if held["val"] is None:
            held["val"], held["train"] = held["train"], None
        elif held["train"] is None:
            held["train"], held["val"] = held["val"], None
        for name in SPLITS:
            if held[name] is not None:
                self._write(name, held[name][1])

    def _write(self, name: str, doc: Document) -> None:
        size = self._write_record(name, doc)
        self.lengths[min(_LENGTH_BINS - 1, max(size, 1).bit_length() - 1)] += 1
        if name == "train":
            for copy in self.augmenter.copies(doc):
                self._write_record(name, copy)

    def _write_record(self, name: str, doc: Document) -> int:
        # Non-ASCII text stays readable; ASCII text takes json's faster escaping path (same output).
        self._files[name].write(json.dumps(doc.to_record(), ensure_ascii=doc.text.isascii()) + "\n")
        stats = self.splits[name]
        size = utf8_len(doc.text)
        stats.documents += 1
        stats.bytes += size
        stats.characters += len(doc.text)
        return size
