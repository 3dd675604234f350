"""Curation: readers -> steps -> deterministic train/val split -> train.jsonl, val.jsonl, stats.json."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TextIO

from lmforge.core.atomic import atomic_open, atomic_write_json
from lmforge.core.progress import Tracker, track
from lmforge.data.config import DataConfig
from lmforge.data.document import Document, utf8_len
from lmforge.data.readers import SourceStats, read_source
from lmforge.data.steps import Step, build_steps, run_steps
from lmforge.errors import DataError

SPLITS = ("train", "val")


@dataclass
class SplitStats:
    documents: int = 0
    bytes: int = 0
    characters: int = 0


def curate(cfg: DataConfig, seed: int, out_dir: Path) -> dict:
    """Write ``out_dir/{train,val}.jsonl`` and ``out_dir/stats.json`` (each atomically); return the stats."""
    out_dir = Path(out_dir)
    source_stats = [SourceStats() for _ in cfg.sources]
    # Resolving every source first makes a bad path fail before any work is done.
    readers = [read_source(i, source, source_stats[i]) for i, source in enumerate(cfg.sources)]
    steps = build_steps(cfg)

    def check(kept: int) -> None:  # called before the split files are committed
        _check_skip_rates(cfg, source_stats)
        if kept == 0:
            raise DataError(_empty_message(source_stats, steps))
        if kept == 1:
            raise DataError("only 1 document left after filtering: a train/validation split needs at least 2")

    with track("curate", unit="docs") as bar:
        docs = _tracked(chain.from_iterable(readers), bar)
        docs = islice(run_steps(docs, steps), cfg.max_documents)
        splits = _split_and_write(docs, seed, cfg.val_fraction, out_dir, check)
        bar.set(train=splits["train"].documents, val=splits["val"].documents)

    stats = {
        "seed": seed,
        "val_fraction": cfg.val_fraction,
        "max_documents": cfg.max_documents,
        "documents_read": sum(s.documents for s in source_stats),
        "bytes_read": sum(s.bytes for s in source_stats),
        "skipped": _sorted_counts(sum((s.skipped for s in source_stats), Counter())),
        "sources": [{"kind": src.kind, "path": src.path, **s.to_dict()} for src, s in zip(cfg.sources, source_stats)],
        "steps": [step.stats.to_dict() for step in steps],
        "splits": {name: asdict(s) for name, s in splits.items()},
    }
    atomic_write_json(out_dir / "stats.json", stats)
    return stats


def split_score(text: str, seed: int) -> float:
    """A number in [0, 1) from a seed-salted hash of the text: the split depends on content, not order."""
    hasher = hashlib.sha256(f"lmforge-split:{seed}:".encode())
    hasher.update(text.encode("utf-8"))
    return int.from_bytes(hasher.digest()[:8], "big") / 2**64


def _split_and_write(
    docs: Iterable[Document], seed: int, val_fraction: float, out_dir: Path, check: Callable[[int], None]
) -> dict[str, SplitStats]:
    """Stream documents into the two files. A document goes to val when its score < ``val_fraction``.

    The train document with the lowest score and the val document with the highest are held back and
    written last: if one split would be empty, the other split's held document moves over. That keeps
    at least one document in each split (from 2 documents on) while staying independent of input order.
    """
    splits = {name: SplitStats() for name in SPLITS}
    held: dict[str, tuple[float, Document] | None] = {name: None for name in SPLITS}
    with atomic_open(out_dir / "train.jsonl", encoding="utf-8") as f_train, \
            atomic_open(out_dir / "val.jsonl", encoding="utf-8") as f_val:
        files = {"train": f_train, "val": f_val}
        for doc in docs:
            score = split_score(doc.text, seed)
            name = "val" if score < val_fraction else "train"
            current = held[name]
            more_extreme = current is None or (score < current[0] if name == "train" else score > current[0])
            if more_extreme:
                held[name] = (score, doc)
                if current is None:
                    continue
                doc = current[1]
            _write(files[name], splits[name], doc)
        check(sum(s.documents for s in splits.values()) + sum(h is not None for h in held.values()))
        if held["val"] is None:
            held["val"], held["train"] = held["train"], None
        elif held["train"] is None:
            held["train"], held["val"] = held["val"], None
        for name in SPLITS:
            if held[name] is not None:
                _write(files[name], splits[name], held[name][1])
    return splits


def _write(f: TextIO, stats: SplitStats, doc: Document) -> None:
    record = {"id": doc.id, "text": doc.text, "source": doc.source}
    # Non-ASCII text stays readable; ASCII text takes json's faster escaping path (same output).
    f.write(json.dumps(record, ensure_ascii=doc.text.isascii()) + "\n")
    stats.documents += 1
    stats.bytes += utf8_len(doc.text)
    stats.characters += len(doc.text)


def _tracked(docs: Iterator[Document], bar: Tracker, every: int = 256) -> Iterator[Document]:
    n = 0
    for n, doc in enumerate(docs, start=1):
        if n % every == 0:
            bar.advance(every)
        yield doc
    bar.advance(n % every)


def _check_skip_rates(cfg: DataConfig, source_stats: list[SourceStats]) -> None:
    for i, stats in enumerate(source_stats):
        skipped = sum(stats.skipped.values())
        if skipped and skipped > cfg.max_skip_fraction * (skipped + stats.documents):
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats.skipped.items()))
            raise DataError(
                f"data.sources[{i}]: {skipped} of {skipped + stats.documents} files or records were unusable "
                f"({reasons}), more than data.max_skip_fraction={cfg.max_skip_fraction}"
            )


def _empty_message(source_stats: list[SourceStats], steps: list[Step]) -> str:
    read = sum(s.documents for s in source_stats)
    skipped = sum((s.skipped for s in source_stats), Counter())
    dropped = sum((step.stats.dropped for step in steps), Counter())
    parts = [f"no documents left after filtering: {read} read"]
    for label, counts in (("skipped", skipped), ("dropped", dropped)):
        if counts:
            parts.append(f"{label}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return ", ".join(parts)


def _sorted_counts(counts: Counter) -> dict[str, int]:
    return dict(sorted(counts.items()))
