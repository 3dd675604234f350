"""Curation: shards (read -> per-document steps) -> corpus dedup -> train/val split (+ augmentation)
-> train.jsonl, val.jsonl, stats.json, and the report.

    stats = curate(cfg, seed, run / "data")

The per-document steps run in worker processes over input shards (``executor``), or as tasks on a Ray
cluster (``ray_executor``); exact and near-duplicate removal run here, in the driver, in corpus order, on
digests and signatures of every shard; then the kept documents are streamed from the shard files into the
two splits. A killed run, rerun with the same recipe, reuses the finished shards in ``data/work`` and
writes byte-identical files; so does a run with another number of workers, or on the other executor.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmforge.core.atomic import atomic_open, atomic_write_json, remove_stale_temporaries
from lmforge.data.augment.apply import Augmenter
from lmforge.data.config import DataConfig
from lmforge.data.dedup import CorpusDedup
from lmforge.data.document import Document
from lmforge.data.executor import executor_session, make_runner, prepare_work
from lmforge.data.progress_bars import StepBars
from lmforge.data.readers import SourceStats
from lmforge.data.shard_work import LENGTH_BINS, ShardResult, iter_shard_documents, shard_path
from lmforge.data.shards import plan_fingerprint, plan_shards
from lmforge.data.split import SplitWriter, split_score
from lmforge.data.steps import build_steps
from lmforge.data.streaming import StepStats
from lmforge.errors import DataError

EXAMPLE_CLUSTERS = 5


def curate(cfg: DataConfig, seed: int, out_dir: Path) -> dict:
    """Write ``out_dir/{train,val}.jsonl`` and ``out_dir/stats.json`` (each atomically); return the stats."""
    out_dir = Path(out_dir)
    shards = plan_shards(cfg)  # resolving every source first: a bad path fails before any work is done
    if cfg.tabular is not None and not Path(cfg.tabular.path).expanduser().is_file():
        raise DataError(f"data.tabular.path: no such file: {cfg.tabular.path}")
    with executor_session(cfg):  # data.executor ray: the cluster must answer, before anything is written
        remove_stale_temporaries(out_dir)  # files a killed run was writing
        work = out_dir / "work"
        prepare_work(work, plan_fingerprint(cfg, shards))
        try:
            stats = _curate(cfg, seed, out_dir, work, shards)
        except DataError:
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume: the recipe or the data must change
            raise
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return stats


def _curate(cfg: DataConfig, seed: int, out_dir: Path, work: Path, shards: list) -> dict:
    steps = [s.name for s in build_steps(cfg)]
    dedup = ["dedup"] if cfg.dedup_exact or cfg.minhash.enabled else []
    bar_names = ["read", *steps, *(["signatures"] if cfg.minhash.enabled else []), *dedup, "write"]
    files_are_documents = all(s.kind in ("python-stdlib", "text", "files") for s in cfg.sources)
    corpus = _Corpus(cfg)
    with make_runner(shards, cfg, work) as runner, \
            StepBars(bar_names, sum(len(s.files) for s in shards) if files_are_documents else None) as bars:
        for result in runner.results(bars.advance):
            corpus.add(result)
            bars.advance("dedup", result.documents)
            if cfg.max_documents is not None and corpus.dedup.kept >= cfg.max_documents:
                break  # decisions never depend on later documents: the rest cannot change the output
        _check(cfg, corpus, min(corpus.dedup.kept, cfg.max_documents or corpus.dedup.kept))
        tabular = None
        if cfg.tabular is not None:  # before the document files: a bad table fails with nothing written
            from lmforge.data.tabular.stage import curate_tabular

            tabular = curate_tabular(cfg.tabular, seed, cfg.val_fraction, out_dir)
        with SplitWriter(out_dir, seed, cfg.val_fraction, Augmenter(cfg.augment, seed)) as writer:
            examples = _write_documents(cfg, corpus, work, out_dir, writer, bars)
    stats = corpus.stats(cfg, seed, writer, examples, workers=runner.workers)
    if tabular is not None:
        stats["tabular"] = tabular
    bad_records = [{"source": i, **r} for i, source in enumerate(corpus.sources) for r in source.bad_records]
    if bad_records:
        with atomic_open(out_dir / "skipped.jsonl", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in bad_records)
    atomic_write_json(out_dir / "stats.json", stats)
    if cfg.report:
        from lmforge.data.report import write_report

        write_report(stats, out_dir)
    _remove_stale_outputs(out_dir, cfg, bool(bad_records))
    return stats


def _remove_stale_outputs(out_dir: Path, cfg: DataConfig, skipped: bool) -> None:
    """Optional files an earlier run with other settings left, which this run did not write."""
    stale = {"skipped.jsonl": not skipped, "dropped.jsonl": not cfg.write_dropped,
             "summary.md": not cfg.report, "length_histogram.png": not cfg.report}
    for name, remove in stale.items():
        if remove:
            (out_dir / name).unlink(missing_ok=True)
    if cfg.tabular is None:
        shutil.rmtree(out_dir / "tabular", ignore_errors=True)


class _Corpus:
    """What the main process gathers from the shard results, in order: counts, keep masks, dedup state."""

    def __init__(self, cfg: DataConfig) -> None:
        self.dedup = CorpusDedup(cfg.dedup_exact, cfg.minhash)
        self.sources = [SourceStats() for _ in cfg.sources]
        self.steps: list[StepStats] = [StepStats(step.name) for step in build_steps(cfg)]
        self.lengths_read = [0] * LENGTH_BINS
        self.used: list[tuple[int, np.ndarray]] = []  # (shard index, keep mask) of the shards used

    def add(self, result: ShardResult) -> None:
        self.used.append((result.index, self.dedup.add_shard(result)))
        self.sources[result.source_index].add(result.source)
        for total, part in zip(self.steps, result.steps):
            total.add(part)
        self.lengths_read = [a + b for a, b in zip(self.lengths_read, result.lengths_read)]

    def stats(self, cfg: DataConfig, seed: int, writer: SplitWriter, examples: list[dict], workers: int) -> dict:
        return {
            "seed": seed,
            "val_fraction": cfg.val_fraction,
            "max_documents": cfg.max_documents,
            "documents_read": sum(s.documents for s in self.sources),
            "bytes_read": sum(s.bytes for s in self.sources),
            "skipped": _sorted(sum((s.skipped for s in self.sources), Counter())),
            "sources": [{"kind": src.kind, "path": src.path, **s.to_dict()} for src, s in zip(cfg.sources, self.sources)],
            "steps": [s.to_dict() for s in (*self.steps, *self.dedup.steps())],
            "pii_replacements": _sorted(sum((s.counts for s in self.steps if s.name == "pii"), Counter())),
            "near_duplicates": {
                "bands": self.dedup.bands, "rows": self.dedup.rows, "threshold": cfg.minhash.threshold,
                "clusters": len(self.dedup.clusters()), "examples": examples,
            } if cfg.minhash.enabled or cfg.dedup_exact else None,
            "augmented": _sorted(writer.augmenter.counts),
            "lengths": {"bins": "k: 2**k to 2**(k+1)-1 UTF-8 bytes", "read": self.lengths_read,
                        "kept": writer.lengths},
            "shards": {"count": len(self.used), "workers": workers},
            "splits": {name: asdict(s) for name, s in writer.splits.items()},
        }


def _write_documents(cfg: DataConfig, corpus: _Corpus, work: Path, out_dir: Path, writer: SplitWriter,
                     bars: StepBars) -> list[dict]:
    """Stream the kept documents into the splits; write the dropped ones if asked; return cluster examples."""
    clusters = corpus.dedup.clusters()
    biggest = sorted(clusters, key=lambda k: (-len(clusters[k]), k))[:EXAMPLE_CLUSTERS]
    wanted = {i for k in biggest for i in (k, *clusters[k][:3])}
    if cfg.write_dropped:
        wanted |= set(clusters)  # the kept document each dropped duplicate is named after
    ids: dict[int, str] = {}
    limit = cfg.max_documents
    with ExitStack() as stack:
        dropped = stack.enter_context(atomic_open(out_dir / "dropped.jsonl", encoding="utf-8")) \
            if cfg.write_dropped else None
        index = written = 0
        for shard_index, keep in corpus.used:
            if dropped is not None:
                dropped.write(shard_path(work, shard_index, ".dropped.jsonl").read_text(encoding="utf-8"))
            for doc, kept in zip(iter_shard_documents(work, shard_index), keep):
                if index in wanted:
                    ids[index] = doc.id
                if kept and (limit is None or written < limit):
                    writer.write(doc)
                    written += 1
                elif not kept and dropped is not None:
                    dropped.write(_dropped_record(doc, index, corpus.dedup, ids))
                index += 1
            bars.advance("write", len(keep))
    return [{"kept": ids[k], "size": 1 + len(clusters[k]), "duplicates": [ids[i] for i in clusters[k][:3]]}
            for k in biggest]


def _dropped_record(doc: Document, index: int, dedup: CorpusDedup, ids: dict[int, str]) -> str:
    kept, step = dedup.duplicate_of[index]
    reason = "duplicate" if step == "dedup_exact" else "near_duplicate"
    record = {"id": doc.id, "source": doc.source, "step": step, "reason": reason, "duplicate_of": ids.get(kept),
              "text": doc.text}
    return json.dumps(record, ensure_ascii=False) + "\n"


def _check(cfg: DataConfig, corpus: _Corpus, kept: int) -> None:
    for i, stats in enumerate(corpus.sources):
        skipped = sum(stats.skipped.values())
        if skipped and skipped > cfg.max_skip_fraction * (skipped + stats.documents):
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats.skipped.items()))
            first = stats.bad_records[0]
            where = first["file"] if first["line"] is None else f"{first['file']}:{first['line']}"
            raise DataError(
                f"data.sources[{i}]: {skipped} of {skipped + stats.documents} files or records were unusable "
                f"({reasons}), more than data.max_skip_fraction={cfg.max_skip_fraction}; "
                f"the first: {where} ({first['reason']})")
    if kept == 0:
        raise DataError(_empty_message(corpus))
    if kept == 1:
        raise DataError("only 1 document left after filtering: a train/validation split needs at least 2")


def _empty_message(corpus: _Corpus) -> str:
    read = sum(s.documents for s in corpus.sources)
    skipped = sum((s.skipped for s in corpus.sources), Counter())
    dropped = sum((step.dropped for step in (*corpus.steps, *corpus.dedup.steps())), Counter())
    parts = [f"no documents left after filtering: {read} read"]
    for label, counts in (("skipped", skipped), ("dropped", dropped)):
        if counts:
            parts.append(f"{label}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return ", ".join(parts)


def _sorted(counts: Counter) -> dict[str, int]:
    return dict(sorted(counts.items()))


__all__ = ["curate", "split_score"]
