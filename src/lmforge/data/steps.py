"""Data steps, all with one streaming interface (datatrove's): an iterator of Documents in, one out.

A step implements one hook, ``process(doc)``: it returns the Document to keep (changed or not) or a
reason string to drop it. ``Step.__call__`` does the streaming and the counting (documents and UTF-8
bytes in and out, documents changed, drops by reason) into the step's ``StepStats``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lmforge.data.config import DataConfig
from lmforge.data.document import Document, utf8_len

# Control characters (Unicode category Cc) other than \t (\x09) and \n (\x0a); \r is turned into \n first.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ASCII_CONTROL = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])


@dataclass
class StepStats:
    name: str
    documents_in: int = 0
    documents_out: int = 0
    changed: int = 0  # documents whose text the step modified
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "dropped": dict(sorted(self.dropped.items()))}


class Step:
    """A streaming step. Subclasses set ``name`` and implement ``process``."""

    name = "step"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    def process(self, doc: Document) -> Document | str:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        stats = self.stats
        for doc in docs:
            stats.documents_in += 1
            stats.bytes_in += utf8_len(doc.text)
            result = self.process(doc)
            if isinstance(result, str):
                stats.dropped[result] += 1
                continue
            stats.documents_out += 1
            stats.bytes_out += utf8_len(result.text)
            stats.changed += result.text is not doc.text
            yield result


class Normalize(Step):
    """Unicode normalization (NFC keeps look-alike characters apart; NFKC folds them: "ﬁ" -> "fi")."""

    name = "normalize"

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def process(self, doc: Document) -> Document:
        if doc.text.isascii() or unicodedata.is_normalized(self.form, doc.text):
            return doc
        return dataclasses.replace(doc, text=unicodedata.normalize(self.form, doc.text))


class StripControl(Step):
    """Turn \\r\\n and \\r into \\n and remove every other control character but \\n and \\t."""

    name = "strip_control"

    def process(self, doc: Document) -> Document:
        text = doc.text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _strip_ascii_control(text) if text.isascii() else _CONTROL.sub("", text)
        return doc if text == doc.text else dataclasses.replace(doc, text=text)


def _strip_ascii_control(text: str) -> str:
    raw = text.encode("ascii")
    kept = raw.translate(None, _ASCII_CONTROL)  # bytes.translate: ~2x faster than the regex
    return text if len(kept) == len(raw) else kept.decode("ascii")


class LengthFilter(Step):
    """Drop blank documents (empty or whitespace only), then those outside [min_chars, max_chars]."""

    name = "length"

    def __init__(self, min_chars: int, max_chars: int) -> None:
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars

    def process(self, doc: Document) -> Document | str:
        n = len(doc.text)
        if n == 0 or doc.text.isspace():
            return "blank"
        if n < self.min_chars:
            return "too_short"
        if n > self.max_chars:
            return "too_long"
        return doc


class ExactDedup(Step):
    """Keep the first document with a given text (sha256 of its UTF-8 bytes); drop later copies."""

    name = "dedup_exact"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()

    def process(self, doc: Document) -> Document | str:
        digest = hashlib.sha256(doc.text.encode("utf-8")).digest()
        if digest in self.seen:
            return "duplicate"
        self.seen.add(digest)
        return doc


def build_steps(cfg: DataConfig) -> list[Step]:
    """The configured steps, in order: normalize, strip control characters, length filter, dedup."""
    steps: list[Step] = []
    if cfg.normalize != "none":
        steps.append(Normalize(cfg.normalize))
    if cfg.strip_control:
        steps.append(StripControl())
    steps.append(LengthFilter(cfg.min_chars, cfg.max_chars))
    if cfg.dedup_exact:
        steps.append(ExactDedup())
    return steps


def run_steps(docs: Iterable[Document], steps: list[Step]) -> Iterator[Document]:
    for step in steps:
        docs = step(docs)
    return iter(docs)
