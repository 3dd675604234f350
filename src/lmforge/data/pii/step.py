"""The PII step: replace confirmed spans with typed placeholders (``<EMAIL>``, ``<IPV4>``, ...)."""

from __future__ import annotations

import dataclasses
from collections import Counter

from lmforge.data.document import Document
from lmforge.data.pii.config import PiiConfig
from lmforge.data.pii.detectors import KINDS, PLACEHOLDERS, Span, build_detectors, find_spans
from lmforge.data.streaming import Step


class PiiScrubber(Step):
    """Counts replacements by kind in ``stats.counts``; documents are changed, never dropped."""

    name = "pii"

    def __init__(self, cfg: PiiConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def process(self, doc: Document) -> Document:
        text, counts = scrub(doc.text, self.cfg)
        if not counts:
            return doc
        self.stats.counts.update(counts)
        return dataclasses.replace(doc, text=text)


def detect(text: str, cfg: PiiConfig) -> list[Span]:
    """Non-overlapping (start, end, kind) spans, sorted by start.

    Where candidates overlap, the kind earlier in ``KINDS`` wins, then the earlier and longer span.
    """
    detectors = build_detectors(cfg.kinds, ip_global_only=cfg.ip_global_only)
    secrets = {"min_length": cfg.secret_min_length, "min_entropy": cfg.secret_min_entropy}
    spans = find_spans(text, detectors, emails="email" in cfg.kinds,
                       secrets=secrets if "secret" in cfg.kinds else None)
    taken: list[Span] = []
    for start, end, kind in sorted(spans, key=lambda s: (KINDS.index(s[2]), s[0], -s[1])):
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, kind))
    return sorted(taken)


def scrub(text: str, cfg: PiiConfig) -> tuple[str, Counter]:
    """``text`` with every detected span replaced by its placeholder, and the replacements by kind."""
    spans = detect(text, cfg)
    if not spans:
        return text, Counter()
    parts, last = [], 0
    for start, end, kind in spans:
        parts += [text[last:start], PLACEHOLDERS[kind]]
        last = end
    parts.append(text[last:])
    return "".join(parts), Counter(kind for _, _, kind in spans)
