"""Typed configs of the data stage: ``data:``, ``tokenizer:`` and ``pack:`` in a recipe.

``data`` holds the sources and every curation step in pipeline order: normalize, strip_control, the
length filter, ``quality`` rule sets, ``pii`` scrubbing (per document, in parallel shards), then exact
and ``minhash`` near-duplicate removal (across the corpus), the split, ``augment`` (training split only),
and the optional ``tabular`` cleaning of a numeric table; ``executor`` (with ``ray``) says where the
per-document steps run. See each section's class for its keys.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lmforge.core.config import StrictModel
from lmforge.data.augment.config import AugmentConfig
from lmforge.data.pii.config import PiiConfig
from lmforge.data.quality.config import QualityConfig
from lmforge.data.tabular.config import TabularConfig

SourceKind = Literal["python-stdlib", "text", "files", "jsonl", "csv", "parquet"]
RECORD_KINDS = ("jsonl", "csv", "parquet")


class SourceConfig(StrictModel):
    """One input: the running interpreter's standard library, text/source files, or records
    (JSONL, plain or .gz/.zst; CSV; Parquet) with the text in one field and optionally a label in another."""

    kind: SourceKind
    # A file, a directory, or a glob pattern. Required for every kind but python-stdlib.
    path: str | None = Field(default=None, validate_default=True)
    pattern: str = "**/*"  # glob under a directory ``path``
    field: str = "text"  # records: which field holds the text
    label_field: str | None = None  # records: which field holds the label (labelled data), if any
    max_documents: int | None = Field(default=None, ge=1)
    # Which quality rule sets apply: "code" (code rules), "prose" (Gopher, C4, FineWeb), or "auto":
    # code for python-stdlib and for files with a source code ending (.py, .c, ...), prose otherwise.
    content: Literal["auto", "code", "prose"] = "auto"

    @field_validator("path")
    @classmethod
    def _path_required(cls, path: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "python-stdlib" and path is not None:
            raise ValueError("kind 'python-stdlib' takes no path (it reads the running interpreter's stdlib)")
        if kind is not None and kind != "python-stdlib" and not path:
            raise ValueError(f"a path (file, directory or glob pattern) is required for kind {kind!r}")
        return path

    @model_validator(mode="after")
    def _label_only_for_records(self) -> SourceConfig:
        if self.label_field is not None and self.kind not in RECORD_KINDS:
            raise ValueError(f"label_field is for record sources ({', '.join(RECORD_KINDS)}), not {self.kind!r}")
        if self.label_field is not None and self.label_field == self.field:
            raise ValueError(f"label_field and field are both {self.field!r}")
        return self


class MinHashConfig(StrictModel):
    """Near-duplicate removal: MinHash signatures of word n-grams, LSH bands, one document kept per cluster.

    Documents are decided in corpus order: a document is dropped when its estimated Jaccard similarity
    to an earlier document reaches ``threshold`` (LSH finds the candidates, the signatures confirm), and
    joins that document's cluster; the first document of each cluster is kept. The default threshold, 0.5
    on 5-word shingles, finds 98% of the pairs in bench/near_dup_corpus.py (copies with 1-10% of their
    lines edited) with no false pair; 0.7 (text-dedup's default) finds 80% there (see BENCHMARKS.md).
    """

    enabled: bool = True
    ngram: int = Field(default=5, ge=1, le=64)  # shingle size in words
    num_perm: int = Field(default=128, ge=8, le=1024)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    # LSH layout; both null: chosen from threshold and num_perm (as datasketch does)
    bands: int | None = Field(default=None, ge=1)
    rows: int | None = Field(default=None, ge=1)
    seed: int = 1  # of the hash permutations

    @model_validator(mode="after")
    def _bands_fit(self) -> MinHashConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then they are chosen from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows ({self.bands} * {self.rows}) is more than num_perm ({self.num_perm})")
        return self


_RAY_ADDRESS = re.compile(r"(ray://)?[^\s:/]+:[0-9]{1,5}")


class RayConfig(StrictModel):
    """``data.executor: ray``: the shards run as Ray tasks on the workers of this cluster.

    ``address``: ``auto`` (the cluster this machine joined with ``ray start``, or ``RAY_ADDRESS``),
    ``host:port`` (the head node's GCS port, 6379 by default), ``ray://host:port`` (a Ray Client server,
    needs ``pip install 'ray[client]'``), or null: a Ray instance on this machine alone, started for the run.
    A task whose worker process or node dies is run again, up to ``max_retries`` times.
    """

    address: str | None = None
    max_retries: int = Field(default=3, ge=0, le=100)

    @field_validator("address")
    @classmethod
    def _address_form(cls, address: str | None) -> str | None:
        if address is not None and address != "auto" and not _RAY_ADDRESS.fullmatch(address):
            raise ValueError("expected auto, host:port or ray://host:port")
        return address


class DataConfig(StrictModel):
    """Curation: read the sources, clean and filter the documents, split them into train and val."""

    sources: list[SourceConfig] = Field(min_length=1)
    normalize: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"
    # Remove control characters other than \n and \t; turn \r\n and \r into \n.
    strip_control: bool = True
    min_chars: int = Field(default=32, ge=0)
    max_chars: int = Field(default=1_000_000, ge=1)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    dedup_exact: bool = True
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    max_documents: int | None = Field(default=None, ge=1)  # cap after filtering, for quick runs
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    tabular: TabularConfig | None = None
    # Fail when more than this fraction of a source's files or records is unusable (binary, undecodable,
    # invalid JSON, ...): skipped input is counted, but a mostly-corrupt source is a mistake, not data.
    max_skip_fraction: float = Field(default=0.1, ge=0, le=1)
    # Warn after curation when the steps drop more than this fraction of the documents read (curate/summary.json
    # warnings): a corpus filtered almost away trains a model that cannot learn.
    warn_drop_fraction: float = Field(default=0.9, ge=0, le=1)
    # Execution: input files are grouped into shards of about this many MB, run by this many worker
    # processes ("auto": one per CPU core, at most 8); finished shards survive a kill and are reused.
    # With executor "ray" the shards run as tasks on a Ray cluster (``ray``, pip install lmforge[ray]):
    # the same files come out; ``workers`` caps the tasks at once ("auto": one per CPU of the cluster).
    workers: int | Literal["auto"] = "auto"
    executor: Literal["local", "ray"] = "local"
    ray: RayConfig = Field(default_factory=RayConfig)
    shard_mb: float = Field(default=4.0, gt=0)
    keep_work: bool = False  # keep data/work/ (the per-shard results) after a successful run
    # Reports: data/dropped.jsonl (every dropped document with its step and reason), and
    # data/summary.md + data/length_histogram.png.
    write_dropped: bool = False
    report: bool = True

    @field_validator("workers")
    @classmethod
    def _workers_positive(cls, workers: int | str) -> int | str:
        if isinstance(workers, int) and workers < 1:
            raise ValueError(f"workers must be 'auto' or at least 1, got {workers}")
        return workers

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
