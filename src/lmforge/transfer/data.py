"""Fine-tuning data of its own, under ``<run>/finetune/``: new sources (``finetune.sources``) curated with the
recipe's ``data:`` steps into ``finetune/data/``, and the documents (those, or the run's curated ones) packed
with the base's tokenizer into ``finetune/tokens/{train,val}`` whenever the run's token shards do not serve:
new sources, or a base that reads another tokenizer (a Hugging Face model, another run's). The tokenizer is
never retrained: the base's is the one its embeddings know. A base of another tokenizer has it copied to
``finetune/tokenizer/`` so the fine-tuned checkpoints carry it (``checkpoint.load.model_tokenizer_path``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lmforge.core.atomic import atomic_write_json
from lmforge.core.progress import info
from lmforge.data.curate import curate
from lmforge.data.readers import resolve_files
from lmforge.data.packing import INDEX, pack_tokens
from lmforge.data.tokenizer import end_of_text_id, keep_tokenizer, read_tokenizer, tokenizer_digest
from lmforge.errors import FinetuneError
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir

@dataclasses.dataclass(frozen=True)
class FinetuneData:
    """Where fine-tuning reads its tokens and tokenizer."""
    tokenizer: Path  # the base's tokenizer.json
    foreign: bool  # not the run's tokenizer
    own_tokens: bool  # packed for fine-tuning (finetune/tokens), not the run's pack/
    eos_id: int


def plan_data(run: RunDir, cfg: RunConfig, base_tokenizer: Path | None) -> FinetuneData:
    """What fine-tuning reads, checked before anything is written: the base's tokenizer (the run's when the
    base brings none) must name an end-of-text token; new sources' paths must exist."""
    own = base_tokenizer is None or tokenizer_digest(base_tokenizer) == tokenizer_digest(run.tokenizer)
    tokenizer = run.tokenizer if own else base_tokenizer
    eos = end_of_text_id(tokenizer, read_tokenizer(tokenizer))
    if eos is None:
        raise FinetuneError(f"finetune.base: its tokenizer {tokenizer} names no end-of-text token (no "
                            "<|endoftext|>, and no eos_token in tokenizer_config.json or eos_token_id in config.json)")
    sources = cfg.finetune.sources if cfg.finetune is not None else None
    for i, source in enumerate(sources or []):
        resolve_files(i, source, "finetune.sources")  # a missing path or an empty glob: one line, now
    if sources is None and not run.train_docs.exists():
        raise FinetuneError(f"{run.train_docs}: not found; run the data stages first (lmforge data)")
    return FinetuneData(tokenizer, not own, bool(sources) or not own, eos)


def data_key(run: RunDir, cfg: RunConfig, data: FinetuneData) -> dict:
    """What the packed tokens depend on: the tokenizer, and the sources with the curation steps (or the run's
    curated documents)."""
    sources = cfg.finetune.sources
    if sources:
        docs = {"sources": [s.model_dump() for s in sources], "curation": cfg.data.model_dump(exclude={"sources"}),
                "seed": cfg.seed}
    else:
        docs = {"curated": {s: tokenizer_digest(p) for s, p in (("train", run.train_docs), ("val", run.val_docs))}}
    return {"tokenizer": tokenizer_digest(data.tokenizer), **docs, "pack": cfg.pack.model_dump()}


def prepare_data(run: RunDir, stage_dir: Path, cfg: RunConfig, data: FinetuneData) -> dict:
    """Curate and pack what ``data`` says (reused when its key is unchanged: ``--resume`` reads the same
    tokens); returns the figures for the summary."""
    if data.foreign:
        keep_tokenizer(data.tokenizer, stage_dir / "tokenizer", data.eos_id)
    if not data.own_tokens:
        return {}
    tokens, key_file = stage_dir / "tokens", stage_dir / "tokens" / "key.json"
    key = data_key(run, cfg, data)
    if key_file.is_file() and json.loads(key_file.read_text(encoding="utf-8")) == key:
        return _figures(tokens)
    key_file.unlink(missing_ok=True)
    docs = run.curated
    if cfg.finetune.sources:
        docs = stage_dir / "data"
        stats = curate(cfg.data.model_copy(update={"sources": cfg.finetune.sources}), cfg.seed, docs)
        info(f"finetune data: {stats['documents_read']:,} documents read from finetune.sources, "
             f"{stats['splits']['train']['documents']:,} train / {stats['splits']['val']['documents']:,} val kept")
    for split in ("train", "val"):
        index = pack_tokens(data.tokenizer, docs / f"{split}.jsonl", tokens / split, cfg.pack)
        info(f"finetune data: {split}: {index['num_tokens']:,} tokens with {data.tokenizer}")
    atomic_write_json(key_file, key)
    return _figures(tokens)


def _figures(tokens: Path) -> dict:
    out = {}
    for split in ("train", "val"):
        index = json.loads((tokens / split / INDEX).read_text(encoding="utf-8"))
        out[f"{split}_tokens"] = index["num_tokens"]
    return out
