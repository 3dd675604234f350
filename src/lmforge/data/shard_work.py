"""One shard's work, run in a worker process: read -> per-document steps -> the shard's files.

For shard N the work directory gets, each written atomically, the done marker last:
  shard_N.jsonl          the documents that passed the steps, in input order
  shard_N.npz            per document: a 128-bit content digest (exact dedup), the MinHash signature,
                         whether it has one (texts without words do not), and its UTF-8 size
  shard_N.dropped.jsonl  (data.write_dropped) the dropped documents with step and reason
  shard_N.json           counts: source stats with the logged bad records, step stats, lengths read
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from lmforge.core.atomic import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_with
from lmforge.data.config import DataConfig
from lmforge.data.document import Document, utf8_len
from lmforge.data.minhash import MinHasher
from lmforge.data.readers import SourceStats, read_files
from lmforge.data.shards import Shard
from lmforge.data.steps import build_steps
from lmforge.data.streaming import PROGRESS_EVERY, StepStats, run_steps

LENGTH_BINS = 32  # histogram bin k counts texts of 2**k to 2**(k+1)-1 UTF-8 bytes (bin 0: 0 and 1 byte)
Progress = Callable[[str, int], None]


SHARD_FILES = (".jsonl", ".npz", ".dropped.jsonl", ".json")  # in the order written: the done marker last


def shard_path(work: Path, index: int, suffix: str) -> Path:
    return work / f"shard_{index:05d}{suffix}"


def read_shard_files(work: Path, index: int) -> dict[str, bytes]:
    """A finished shard's files as bytes, by suffix (to hand them to a process on another machine)."""
    return {suffix: shard_path(work, index, suffix).read_bytes() for suffix in SHARD_FILES
            if shard_path(work, index, suffix).exists()}


def store_shard_files(work: Path, index: int, files: dict[str, bytes]) -> None:
    """Write what ``read_shard_files`` gave, each file atomically and the done marker last."""
    for suffix in SHARD_FILES:
        if suffix in files:
            atomic_write_bytes(shard_path(work, index, suffix), files[suffix])


def length_bin(size: int) -> int:
    return min(LENGTH_BINS - 1, max(size, 1).bit_length() - 1)


def process_shard(shard: Shard, cfg: DataConfig, work: Path, progress: Progress | None = None) -> None:
    source = cfg.sources[shard.source_index]
    counters = SourceStats()
    lengths_read = [0] * LENGTH_BINS
    steps = build_steps(cfg)
    dropped: list[dict] = []
    for step in steps:
        step.on_progress = progress
        if cfg.write_dropped:
            step.on_drop = lambda name, doc, reason: dropped.append(
                {"id": doc.id, "source": doc.source, "step": name, "reason": reason, "text": doc.text})

    def read() -> Iterator[Document]:
        docs = read_files(source, Path(shard.root), [Path(f) for f in shard.files], counters)
        for n, doc in enumerate(islice(docs, source.max_documents), start=1):
            lengths_read[length_bin(utf8_len(doc.text))] += 1
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress("read", PROGRESS_EVERY)
            yield doc

    hasher = MinHasher(cfg.minhash.num_perm, cfg.minhash.ngram, cfg.minhash.seed) if cfg.minhash.enabled else None
    digests, signatures, has_signature, sizes = [], [], [], []
    with atomic_open(shard_path(work, shard.index, ".jsonl"), encoding="utf-8") as f:
        for n, doc in enumerate(run_steps(read(), steps), start=1):
            record = {**doc.to_record(), "code": doc.is_code}
            f.write(json.dumps(record, ensure_ascii=doc.text.isascii()) + "\n")
            data = doc.text.encode("utf-8")
            digests.append(hashlib.sha256(data).digest()[:16])
            sizes.append(len(data))
            signature = hasher.signature(doc.text) if hasher is not None else None
            has_signature.append(signature is not None)
            if hasher is not None:
                signatures.append(signature if signature is not None else np.zeros(hasher.num_perm, np.uint32))
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress("signatures", PROGRESS_EVERY)
    if progress is not None:
        progress("read", counters.documents % PROGRESS_EVERY)
        progress("signatures", len(sizes) % PROGRESS_EVERY)
    num_perm = hasher.num_perm if hasher is not None else 0
    arrays = {
        "digests": np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 16),
        "signatures": np.array(signatures, dtype=np.uint32).reshape(len(sizes), num_perm),
        "has_signature": np.array(has_signature, dtype=bool),
        "sizes": np.array(sizes, dtype=np.int64),
    }
    atomic_write_with(shard_path(work, shard.index, ".npz"), lambda tmp: _save_npz(tmp, arrays))
    if cfg.write_dropped:
        with atomic_open(shard_path(work, shard.index, ".dropped.jsonl"), encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in dropped)
    atomic_write_json(shard_path(work, shard.index, ".json"), {
        "source_index": shard.source_index,
        "documents": len(sizes),
        "source": counters.to_json(),
        "steps": [step.stats.to_dict() for step in steps],
        "lengths_read": lengths_read,
    })


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a name without it
        np.savez(f, **arrays)


@dataclass
class ShardResult:
    """What the main process needs of a finished shard: counts and per-document arrays, no texts."""

    index: int
    source_index: int
    documents: int
    source: SourceStats
    steps: list[StepStats]
    lengths_read: list[int]
    digests: np.ndarray  # (n, 16) uint8
    signatures: np.ndarray  # (n, num_perm) uint32
    has_signature: np.ndarray  # (n,) bool
    sizes: np.ndarray  # (n,) int64


def is_done(work: Path, index: int) -> bool:
    return shard_path(work, index, ".json").exists()


def load_shard(work: Path, index: int) -> ShardResult:
    meta = json.loads(shard_path(work, index, ".json").read_text())
    with np.load(shard_path(work, index, ".npz"), allow_pickle=False) as arrays:
        loaded = {name: arrays[name] for name in ("digests", "signatures", "has_signature", "sizes")}
    return ShardResult(index, meta["source_index"], meta["documents"], SourceStats.from_json(meta["source"]),
                       [StepStats.from_dict(s) for s in meta["steps"]], meta["lengths_read"], **loaded)


def iter_shard_documents(work: Path, index: int) -> Iterator[Document]:
    with open(shard_path(work, index, ".jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield Document(r["id"], r["text"], r["source"], label=r.get("label"), is_code=r["code"])
