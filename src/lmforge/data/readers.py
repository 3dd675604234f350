"""Readers: turn one configured source into a stream of Documents.

Bad input never crashes a run: unreadable, binary (NUL bytes) or undecodable (invalid UTF-8) files and
invalid JSONL records are counted by reason in ``SourceStats.skipped`` and skipped. A missing path or a
glob that matches nothing is a DataError naming ``data.sources[i].path``.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import sysconfig
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from lmforge.data.config import SourceConfig
from lmforge.data.document import Document, utf8_len
from lmforge.errors import DataError

_MAGIC = set("*?[")
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


@dataclass
class SourceStats:
    """What one source yielded: documents and UTF-8 bytes read, and what was skipped, by reason."""

    documents: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "bytes": self.bytes, "skipped": dict(sorted(self.skipped.items()))}


def source_name(source: SourceConfig) -> str:
    return source.kind if source.path is None else f"{source.kind}:{source.path}"


def read_source(index: int, source: SourceConfig, counters: SourceStats) -> Iterator[Document]:
    """Documents of ``source`` (``data.sources[index]``) in a deterministic order, counting into ``counters``.

    The files are resolved now, so a missing path raises here rather than at the first ``next()``.
    """
    if source.kind == "python-stdlib":
        root, files = stdlib_files()
    else:
        root, files = _resolve_files(f"data.sources[{index}].path", source.path, source.pattern)
    name = source_name(source)
    if source.kind == "jsonl":
        docs = (d for path in files for d in _read_jsonl(root, path, name, source.field, counters))
    else:
        docs = (d for path in files for d in _read_file(root, path, name, counters))
    return islice(docs, source.max_documents)


def stdlib_files() -> tuple[Path, list[Path]]:
    """Every ``*.py`` file of the running interpreter's standard library, without installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in ("site-packages", "dist-packages")]  # not stdlib
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return root, sorted(p for p in files if p.is_file())


def _resolve_files(key: str, path: str, pattern: str) -> tuple[Path, list[Path]]:
    """(root that ids are relative to, sorted files). Hidden files are left out, as the shell does."""
    p = Path(path).expanduser()
    if any(c in path for c in _MAGIC):
        root = _glob_root(p)
        matches = glob.glob(str(p), recursive=True)
        what = f"no files match the glob pattern {path!r}"
    elif p.is_file():
        return p.parent, [p]
    elif p.is_dir():
        root = p
        matches = [str(p / m) for m in glob.glob(pattern, root_dir=p, recursive=True)]
        what = f"no files match pattern {pattern!r} under {path}"
    else:
        raise DataError(f"{key}: no such file or directory: {path}")
    files = sorted(Path(m) for m in matches if Path(m).is_file())
    if not files:
        raise DataError(f"{key}: {what}")
    return root, files


def _glob_root(pattern: Path) -> Path:
    """The folder before the first glob character: ``/data/**/*.txt`` -> ``/data``."""
    root = Path(".")
    for part in pattern.parent.parts:
        if any(c in part for c in _MAGIC):
            break
        root = root / part
    return root


def _relative_id(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_file(root: Path, path: Path, name: str, counters: SourceStats) -> Iterator[Document]:
    """One document per file."""
    try:
        data = path.read_bytes()
    except OSError:
        counters.skipped["unreadable"] += 1
        return
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except _GZIP_ERRORS:
            counters.skipped["invalid_gzip"] += 1
            return
    if b"\0" in data:
        counters.skipped["binary"] += 1
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        counters.skipped["invalid_utf8"] += 1
        return
    counters.documents += 1
    counters.bytes += len(data)
    yield Document(_relative_id(root, path), text, name)


def _read_jsonl(root: Path, path: Path, name: str, key: str, counters: SourceStats) -> Iterator[Document]:
    """One document per non-blank line; the text is in field ``key``."""
    rel = _relative_id(root, path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                text, reason = _parse_record(line, key)
                if reason:
                    counters.skipped[reason] += 1
                    continue
                counters.documents += 1
                counters.bytes += utf8_len(text)
                yield Document(f"{rel}:{lineno}", text, name)
    except _GZIP_ERRORS as e:  # a file that cannot be read, or a corrupt gzip stream
        bad_gzip = path.suffix == ".gz" and not isinstance(e, (FileNotFoundError, PermissionError))
        counters.skipped["invalid_gzip" if bad_gzip else "unreadable"] += 1


def _parse_record(line: bytes, key: str) -> tuple[str | None, str | None]:
    """(text, None) for a good record, else (None, reason)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    except json.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(record, dict) or key not in record:
        return None, "missing_field"
    text = record[key]
    if not isinstance(text, str):
        return None, "field_not_string"
    try:
        if not text.isascii():
            text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON ("\ud800")
        return None, "invalid_utf8"
    return text, None
