"""What every reader shares: the per-source counters, document ids relative to a source's root, and whether a
document is code (which quality rules apply). Both the file readers (``readers.py``) and the record readers
(``records.py``) use them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.config import SourceConfig
from lmforge.data.document import is_code_path

MAX_LOGGED = 1000  # bad records logged with file and line per source and shard; all are counted


@dataclass
class SourceStats:
    """What one source yielded: documents and UTF-8 bytes read, and what was skipped, by reason."""

    documents: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    bad_records: list[dict] = field(default_factory=list)  # {"file", "line", "reason"}, the first MAX_LOGGED

    def skip(self, reason: str, file: str, line: int | None = None) -> None:
        self.skipped[reason] += 1
        if len(self.bad_records) < MAX_LOGGED:
            self.bad_records.append({"file": file, "line": line, "reason": reason})

    def add(self, other: SourceStats) -> None:
        self.documents += other.documents
        self.bytes += other.bytes
        self.skipped.update(other.skipped)
        self.bad_records += other.bad_records[:max(0, MAX_LOGGED - len(self.bad_records))]

    def to_dict(self) -> dict:
        return {"documents": self.documents, "bytes": self.bytes, "skipped": dict(sorted(self.skipped.items()))}

    def to_json(self) -> dict:
        return {**self.to_dict(), "bad_records": self.bad_records}

    @classmethod
    def from_json(cls, data: dict) -> SourceStats:
        return cls(data["documents"], data["bytes"], Counter(data["skipped"]), list(data["bad_records"]))


def relative_id(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def is_code(source: SourceConfig, doc_id: str) -> bool:
    if source.content != "auto":
        return source.content == "code"
    return source.kind == "python-stdlib" or (source.kind in ("text", "files") and is_code_path(doc_id))
