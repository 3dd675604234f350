"""Record readers: JSONL (plain, .gz, .zst), CSV and Parquet, one document per record.

The text is in field ``source.field``, the label (if any) in ``source.label_field``; the document id
is ``file:line`` (JSONL, CSV) or ``file:row`` (Parquet). Each bad record is counted and logged with its
file and line: invalid JSON, invalid UTF-8, NUL bytes, a missing or non-string field, an unreadable or
truncated file (counted once, at the line where reading stopped; the records before it are kept).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.config import SourceConfig
from lmforge.data.document import Document, utf8_len
from lmforge.data.line_streams import CorruptInput, iter_lines
from lmforge.data.source_stats import SourceStats, is_code, relative_id

_LABEL_TYPES = (str, int, float, bool)


def read_records(source: SourceConfig, root: Path, path: Path, name: str,
                 counters: SourceStats) -> Iterator[Document]:
    rel = relative_id(root, path)
    reader = {"jsonl": jsonl_records, "csv": csv_records, "parquet": parquet_records}[source.kind]
    code = is_code(source, rel)
    for line, record in reader(path, rel, counters, [source.field, source.label_field]):
        text, label, reason = _fields(record, source)
        if reason:
            counters.skip(reason, rel, line)
            continue
        counters.documents += 1
        counters.bytes += utf8_len(text)
        yield Document(f"{rel}:{line}", text, name, label=label, is_code=code)


def _fields(record, source: SourceConfig) -> tuple[str | None, str | None, str | None]:
    """(text, label, None) for a good record, else (None, None, reason)."""
    if not isinstance(record, dict) or record.get(source.field) is None:
        return None, None, "missing_field"
    text = record[source.field]
    if not isinstance(text, str):
        return None, None, "field_not_string"
    if "\0" in text:
        return None, None, "nul_byte"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: escaped in JSON ("\ud800"), or undecodable CSV bytes
            return None, None, "invalid_utf8"
    label = None
    if source.label_field is not None:
        label = record.get(source.label_field)
        if label is None:
            return None, None, "missing_label"
        if not isinstance(label, _LABEL_TYPES):
            return None, None, "label_not_scalar"
        label = str(label)
    return text, label, None


def jsonl_records(path: Path, rel: str, counters: SourceStats, fields: list) -> Iterator[tuple[int, object]]:
    lineno = 0
    try:
        for lineno, line in enumerate(iter_lines(path), start=1):
            if not line.strip():
                continue
            if b"\0" in line:
                counters.skip("nul_byte", rel, lineno)
                continue
            try:
                yield lineno, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                counters.skip("invalid_utf8", rel, lineno)
            except json.JSONDecodeError:
                counters.skip("invalid_json", rel, lineno)
    except CorruptInput as exc:
        counters.skip(exc.reason, rel, lineno + 1 if lineno else None)


def csv_records(path: Path, rel: str, counters: SourceStats, fields: list) -> Iterator[tuple[int, object]]:
    """Rows as {header: value}, an empty value as None; undecodable bytes become lone surrogates,
    reported by ``_fields``."""
    def lines() -> Iterator[str]:
        for raw in iter_lines(path):
            yield raw.decode("utf-8", "surrogateescape")

    reader = csv.reader(lines())
    header = None
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                counters.skip("invalid_csv", rel, reader.line_num)
                continue
            if header is None:
                header = row
                continue
            if not row:
                continue
            if len(row) > len(header):
                counters.skip("invalid_csv", rel, reader.line_num)
                continue
            yield reader.line_num, {k: v if v != "" else None for k, v in zip(header, row)}  # "" is CSV's null
    except CorruptInput as exc:
        counters.skip(exc.reason, rel, reader.line_num + 1)


def parquet_records(path: Path, rel: str, counters: SourceStats, fields: list) -> Iterator[tuple[int, object]]:
    """Rows as {column: value}, reading only the text and label columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(path)
        columns = [name for name in parquet.schema_arrow.names if name in fields]
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError):
        counters.skip("invalid_parquet", rel, row + 1 if row else None)


