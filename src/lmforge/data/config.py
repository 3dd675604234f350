"""Typed configs of the data stage: ``data:``, ``tokenizer:`` and ``pack:`` in a recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lmforge.core.config import StrictModel

SourceKind = Literal["python-stdlib", "text", "files", "jsonl"]


class SourceConfig(StrictModel):
    """One input: the running interpreter's standard library, text/source files, or JSONL records."""

    kind: SourceKind
    # A file, a directory, or a glob pattern. Required for every kind but python-stdlib.
    path: str | None = Field(default=None, validate_default=True)
    pattern: str = "**/*"  # glob under a directory ``path`` (kinds text, files, jsonl)
    field: str = "text"  # jsonl: which field holds the text
    max_documents: int | None = Field(default=None, ge=1)

    @field_validator("path")
    @classmethod
    def _path_required(cls, path: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "python-stdlib" and path is not None:
            raise ValueError("kind 'python-stdlib' takes no path (it reads the running interpreter's stdlib)")
        if kind is not None and kind != "python-stdlib" and not path:
            raise ValueError(f"a path (file, directory or glob pattern) is required for kind {kind!r}")
        return path


class DataConfig(StrictModel):
    """Curation: read the sources, clean and filter the documents, split them into train and val."""

    sources: list[SourceConfig] = Field(min_length=1)
    normalize: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"
    # Remove control characters other than \n and \t; turn \r\n and \r into \n.
    strip_control: bool = True
    min_chars: int = Field(default=32, ge=0)
    max_chars: int = Field(default=1_000_000, ge=1)
    dedup_exact: bool = True
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    max_documents: int | None = Field(default=None, ge=1)  # cap after filtering, for quick runs
    # Fail when more than this fraction of a source's files or records is unusable (binary, undecodable,
    # invalid JSON, ...): skipped input is counted, but a mostly-corrupt source is a mistake, not data.
    max_skip_fraction: float = Field(default=0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _length_range(self) -> DataConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")
        return self


class TokenizerConfig(StrictModel):
    """Byte-level BPE trained on the training split."""

    vocab_size: int = Field(default=4096, ge=300, le=1_000_000)
    min_frequency: int = Field(default=2, ge=1)
    max_train_bytes: int | None = Field(default=None, ge=1)  # cap on training text fed to the trainer


class PackConfig(StrictModel):
    """Packing documents into memory-mappable token shards."""

    shard_tokens: int = Field(default=16_777_216, ge=1024)
    batch_documents: int = Field(default=1024, ge=1)  # documents per encode_batch call
