"""The data stages of a run: curate -> tokenizer -> pack. Each reads the files of the one before it in the
run directory and returns its headline figures (the pipeline records them in ``<stage>/summary.json``)."""

from __future__ import annotations

from lmforge.core.progress import info
from lmforge.data.curate import curate
from lmforge.data.packing import pack_tokens
from lmforge.data.tokenizer import train_tokenizer
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir


def documents_kept(stats: dict) -> int:
    return sum(split["documents"] for split in stats["splits"].values())


def run_curate(run: RunDir, cfg: RunConfig) -> dict:
    stats = curate(cfg.data, cfg.seed, run.curated)
    splits = stats["splits"]
    info(f"curate: {stats['documents_read']:,} documents read, {documents_kept(stats):,} kept "
         f"({splits['train']['documents']:,} train / {splits['val']['documents']:,} val)")
    return {"documents_read": stats["documents_read"], "documents_kept": documents_kept(stats),
            "train_documents": splits["train"]["documents"], "val_documents": splits["val"]["documents"]}


def run_tokenizer(run: RunDir, cfg: RunConfig) -> dict:
    tokenizer = train_tokenizer(cfg.tokenizer, run.train_docs, run.tokenizer)
    info(f"tokenizer: byte-level BPE with {tokenizer.get_vocab_size():,} tokens -> {run.tokenizer}")
    return {"vocab_size": tokenizer.get_vocab_size()}


def run_pack(run: RunDir, cfg: RunConfig) -> dict:
    summary = {}
    for split, docs in (("train", run.train_docs), ("val", run.val_docs)):
        index = pack_tokens(run.tokenizer, docs, run.tokens(split), cfg.pack)
        info(f"pack {split}: {index['num_tokens']:,} tokens in {len(index['shards'])} shard(s)")
        summary[f"{split}_tokens"] = index["num_tokens"]
    return summary
