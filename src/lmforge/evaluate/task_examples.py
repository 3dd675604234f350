"""A task's examples: the typed example of each kind, and reading them from a JSONL (.gz/.zst too), CSV or
Parquet file record by record, where the first bad record is a one-line DataError naming the file and line
(Parquet: row). The task spec itself is in ``tasks.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.records import csv_records, jsonl_records, parquet_records
from lmforge.data.source_stats import SourceStats
from lmforge.errors import DataError


@dataclass(frozen=True)
class MultipleChoiceExample:
    id: str
    context: str
    choices: tuple[str, ...]
    answer: int  # index into choices


@dataclass(frozen=True)
class ClassificationExample:
    id: str
    text: str
    label: str


@dataclass(frozen=True)
class GenerationExample:
    id: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class PerplexityExample:
    id: str
    text: str


Example = MultipleChoiceExample | ClassificationExample | GenerationExample | PerplexityExample

_READERS = {"jsonl": jsonl_records, "csv": csv_records, "parquet": parquet_records}
_COMPRESSED = (".gz", ".zst", ".zstd")
_REASONS = {
    "invalid_json": "invalid JSON", "invalid_utf8": "invalid UTF-8", "nul_byte": "NUL byte",
    "invalid_csv": "malformed CSV row", "invalid_parquet": "unreadable Parquet file", "unreadable": "unreadable file",
}


def examples_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``parquet``, from the file's ending (a .gz/.zst ending is looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    kind = suffixes[-1].lstrip(".") if suffixes else ""
    if kind not in _READERS:
        raise DataError(f"{path}: unknown examples format {path.suffix or '(none)'!r} "
                        "(expected .jsonl, .csv or .parquet)")
    return kind


def read_task_records(path: Path, fields: list[str]) -> Iterator[tuple[int, object]]:
    """(line, record) of ``path`` in file order; a bad line (invalid JSON, a malformed CSV row, ...) is a
    DataError at its place in that order. Parquet reads only the columns in ``fields``."""
    counters = SourceStats()

    def check() -> None:
        if counters.bad_records:
            bad = counters.bad_records[0]
            where = path if bad["line"] is None else f"{path}:{bad['line']}"
            raise DataError(f"{where}: {_REASONS.get(bad['reason'], bad['reason'].replace('_', ' '))}")

    for line, record in _READERS[examples_format(path)](path, str(path), counters, fields):
        check()  # a bad line before this record is reported first
        yield line, record
    check()


def parse_example(spec, record: object, where: str, from_csv: bool = False) -> Example:
    """The typed example of ``record`` for a ``TaskSpec`` ``spec``; ``where`` is "<file>:<line>"; CSV cells
    are all text, so there the choices are a JSON list and an answer index may be written as digits."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be an object, got {type(record).__name__}")
    f = spec.fields()
    example_id = _id(record, f["id"], where)
    if spec.kind == "multiple_choice":
        choices = _choices(record, f["choices"], where, from_csv)
        answer = _answer(record, f["answer"], choices, where, from_csv)
        return MultipleChoiceExample(example_id, _text(record, f["context"], where), choices, answer)
    if spec.kind == "classification":
        return ClassificationExample(example_id, _text(record, f["text"], where),
                                     _label(record, f["label"], spec.labels, where))
    if spec.kind == "generation":
        return GenerationExample(example_id, _text(record, f["prompt"], where), _text(record, f["answer"], where))
    return PerplexityExample(example_id, _text(record, f["text"], where))


def _value(record: dict, field: str, where: str) -> object:
    value = record.get(field)
    if value is None:  # absent, JSON null, an empty CSV cell, a Parquet null
        raise DataError(f"{where}: missing field {field!r}")
    return value


def _text(record: dict, field: str, where: str) -> str:
    value = _value(record, field, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escaped in JSON, or undecodable CSV bytes
        raise DataError(f"{where}: field {field!r} is not valid UTF-8") from None
    return value


def _id(record: dict, field: str, where: str) -> str:
    value = _value(record, field, where)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {field!r} must be a string or an integer, got {type(value).__name__}")
    if value == "":
        raise DataError(f"{where}: field {field!r} is empty")
    return str(value)


def _label(record: dict, field: str, labels: list[str], where: str) -> str:
    value = _value(record, field, where)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if str(value) not in labels:
        raise DataError(f"{where}: {field} {str(value)!r} is not one of the labels ({', '.join(labels)})")
    return str(value)


def _choices(record: dict, field: str, where: str, from_csv: bool) -> tuple[str, ...]:
    value = _value(record, field, where)
    if from_csv and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field {field!r} must be a JSON list of strings in a CSV file") from None
    if not isinstance(value, list):
        raise DataError(f"{where}: field {field!r} must be a list of strings, got {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: field {field!r} is empty")
    for i, choice in enumerate(value):
        if not isinstance(choice, str):
            raise DataError(f"{where}: field {field!r}: choice {i} must be a string, got {type(choice).__name__}")
    repeated = [c for i, c in enumerate(value) if c in value[:i]]
    if repeated:
        raise DataError(f"{where}: field {field!r} repeats the choice {repeated[0]!r}")
    return tuple(value)


def _answer(record: dict, field: str, choices: tuple[str, ...], where: str, from_csv: bool) -> int:
    value = _value(record, field, where)
    if isinstance(value, str):
        if value in choices:
            return choices.index(value)
        if not (from_csv and value.strip().lstrip("-").isdigit()):
            raise DataError(f"{where}: {field} {value!r} is not one of the choices")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: field {field!r} must be a choice index or the choice's text, "
                        f"got {type(value).__name__}")
    if not 0 <= value < len(choices):
        raise DataError(f"{where}: {field} {value} is out of range for {len(choices)} choices")
    return value
