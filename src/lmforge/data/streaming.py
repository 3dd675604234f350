"""The one streaming interface of data steps (datatrove's): an iterator of Documents in, one out.

A step implements one hook, ``process(doc)``: it returns the Document to keep (changed or not) or a
reason string to drop it. ``Step.__call__`` does the streaming and the counting (documents and UTF-8
bytes in and out, documents changed, drops by reason) into the step's ``StepStats``. Whoever runs the
steps may listen: ``on_drop(step_name, doc, reason)`` sees every dropped document (for the side file of
dropped documents) and ``on_progress(step_name, n)`` is told every ``PROGRESS_EVERY`` documents.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from lmforge.data.document import Document, utf8_len

PROGRESS_EVERY = 64
DropListener = Callable[[str, Document, str], None]
ProgressListener = Callable[[str, int], None]


@dataclass
class StepStats:
    name: str
    documents_in: int = 0
    documents_out: int = 0
    changed: int = 0  # documents whose text the step modified
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)  # what else the step counted (PII: replacements by kind)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "dropped": dict(sorted(self.dropped.items())),
                "counts": dict(sorted(self.counts.items()))}

    @classmethod
    def from_dict(cls, data: dict) -> StepStats:
        return cls(**{**data, "dropped": Counter(data["dropped"]), "counts": Counter(data["counts"])})

    def add(self, other: StepStats) -> None:
        """Add the counts of the same step run on another part of the corpus."""
        for name in ("documents_in", "documents_out", "changed", "bytes_in", "bytes_out"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dropped.update(other.dropped)
        self.counts.update(other.counts)


class Step:
    """A streaming step. Subclasses set ``name`` and implement ``process``."""

    name = "step"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)
        self.on_drop: DropListener | None = None
        self.on_progress: ProgressListener | None = None

    def process(self, doc: Document) -> Document | str:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        stats, on_drop, on_progress = self.stats, self.on_drop, self.on_progress
        for doc in docs:
            stats.documents_in += 1
            stats.bytes_in += utf8_len(doc.text)
            if on_progress is not None and stats.documents_in % PROGRESS_EVERY == 0:
                on_progress(self.name, PROGRESS_EVERY)
            result = self.process(doc)
            if isinstance(result, str):
                stats.dropped[result] += 1
                if on_drop is not None:
                    on_drop(self.name, doc, result)
                continue
            stats.documents_out += 1
            stats.bytes_out += utf8_len(result.text)
            stats.changed += result.text is not doc.text
            yield result
        if on_progress is not None and stats.documents_in % PROGRESS_EVERY:
            on_progress(self.name, stats.documents_in % PROGRESS_EVERY)


def run_steps(docs: Iterable[Document], steps: list[Step]) -> Iterator[Document]:
    for step in steps:
        docs = step(docs)
    return iter(docs)
