"""Shards: the units of work of the executor, consecutive input files of one source, about
``data.shard_mb`` of input each. A source with ``max_documents`` is one shard (its reader stops early).

A work directory belongs to one plan: its fingerprint covers the recipe's per-document settings and every
input file's path, size and modification time, so a rerun reuses finished shards only if nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.data.config import DataConfig
from lmforge.data.readers import resolve_files

# DataConfig keys that do not change what a shard holds (they act after the shards, or on execution).
_NOT_IN_SHARDS = {"dedup_exact", "val_fraction", "max_documents", "augment", "tabular", "max_skip_fraction",
                  "workers", "executor", "ray", "keep_work", "report"}


@dataclass(frozen=True)
class Shard:
    index: int
    source_index: int
    root: str
    files: tuple[str, ...]

    def to_json(self) -> dict:
        return {**asdict(self), "files": list(self.files)}


def plan_shards(cfg: DataConfig) -> list[Shard]:
    """Resolve every source (a bad path fails here, before any work) and cut its files into shards."""
    limit = cfg.shard_mb * 1e6
    shards: list[Shard] = []
    for index, source in enumerate(cfg.sources):
        root, files = resolve_files(index, source)
        group: list[str] = []
        size = 0.0
        for path in files:
            group.append(str(path))
            size += _size(path)
            if size >= limit and source.max_documents is None:
                shards.append(Shard(len(shards), index, str(root), tuple(group)))
                group, size = [], 0.0
        if group:
            shards.append(Shard(len(shards), index, str(root), tuple(group)))
    return shards


def plan_fingerprint(cfg: DataConfig, shards: list[Shard]) -> str:
    settings = cfg.model_dump(mode="json", exclude=_NOT_IN_SHARDS)
    files = [[shard.source_index, [[f, *_stamp(Path(f))] for f in shard.files]] for shard in shards]
    payload = json.dumps({"settings": settings, "files": files}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _stamp(path: Path) -> list[int]:
    try:
        stat = path.stat()
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


def worker_count(cfg: DataConfig, pending: int, cpus: int | None = None) -> int:
    """Shards run at once: ``data.workers``, or for "auto" one per CPU (``cpus``: of a cluster; else this
    machine's, at most 8), never more than there are shards to run."""
    if cfg.workers != "auto":
        wanted = cfg.workers
    else:
        wanted = min(os.cpu_count() or 1, 8) if cpus is None else cpus
    return max(1, min(wanted, pending))
