"""The data stages of a run: curate -> tokenizer -> pack. Each reads the files of the one before it in the
run directory and returns its headline figures (the pipeline records them in ``<stage>/summary.json``)."""

from __future__ import annotations

from collections import Counter

from lmforge.core.progress import info, warn
from lmforge.data.curate import curate
from lmforge.data.packing import pack_tokens
from lmforge.data.tokenizer import train_tokenizer
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir


# Warn when the filters drop more than this fraction of the documents read (``data.warn_drop_fraction``).
WARN_DROP_FRACTION = 0.9
TOP_REASONS = 3


def documents_kept(stats: dict) -> int:
    return sum(split["documents"] for split in stats["splits"].values())


def run_curate(run: RunDir, cfg: RunConfig) -> dict:
    stats = curate(cfg.data, cfg.seed, run.curated)
    splits = stats["splits"]
    info(f"curate: {stats['documents_read']:,} documents read, {documents_kept(stats):,} kept "
         f"({splits['train']['documents']:,} train / {splits['val']['documents']:,} val)")
    message = drop_warning(stats, cfg.data, cfg.data.warn_drop_fraction)
    return {"documents_read": stats["documents_read"], "documents_kept": documents_kept(stats),
            "documents_dropped": documents_dropped(stats),
            "train_documents": splits["train"]["documents"], "val_documents": splits["val"]["documents"],
            "warnings": [warn(message)] if message else []}


def drop_reasons(stats: dict) -> Counter:
    """Documents dropped by reason over every step of a curation's stats; a length reason is named with its
    step (``length:too_short``), the quality reasons name their rule set already (``code:max_line_length``)."""
    reasons = Counter()
    for step in stats["steps"]:
        for reason, count in step["dropped"].items():
            reasons[f"length:{reason}" if step["name"] == "length" else reason] += count
    return reasons


def documents_dropped(stats: dict) -> int:
    return sum(drop_reasons(stats).values())


def drop_warning(stats: dict, data, threshold: float) -> str | None:
    """The warning when the steps dropped more than ``threshold`` of the documents read: the fraction, the
    top reasons with their counts, and the recipe keys that keep more (``data``: the recipe's data section)."""
    read, reasons = stats["documents_read"], drop_reasons(stats)
    dropped = sum(reasons.values())
    if not read or dropped <= threshold * read:
        return None
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    shown = ", ".join(f"{reason} {count:,}" for reason, count in top)
    hints = _keep_more(dict(top), data)
    return (f"curate: the filters dropped {dropped / read:.1%} of the documents ({dropped:,} of {read:,} read), "
            f"more than {threshold:.0%}; top reasons: {shown}"
            + (f"; to keep more: {'; '.join(hints)}" if hints else ""))


def _keep_more(reasons: dict[str, int], data) -> list[str]:
    """The recipe keys that would keep the documents these reasons dropped."""
    hints, rules = [], []
    for reason in reasons:
        if reason in ("length:too_short", "length:too_long"):
            key = "min_chars" if reason == "length:too_short" else "max_chars"
            hints.append(f"data.{key} (now {getattr(data, key):,})")
        elif reason == "duplicate":
            hints.append("data.dedup_exact: false keeps exact duplicates")
        elif reason == "near_duplicate":
            hints.append(f"a higher data.minhash.threshold (now {data.minhash.threshold:g}) keeps more near "
                         "duplicates, data.minhash.enabled: false all")
        elif ":" in reason and not reason.startswith("length:"):
            rules.append(reason.split(":", 1))
    if not rules:
        return hints
    sources = "data.sources[0].content" if len(data.sources) == 1 else "data.sources[i].content"
    out = [f"if the documents are code, or prose, say so with {sources}: code | prose (the code rule set "
           "judges code, the prose ones prose)"]
    for rule_set, rule in rules:
        value = getattr(getattr(data.quality, rule_set, None), rule, None)
        if rule == "empty" or value is None:
            continue  # not a setting (fineweb:empty), or one already off
        off = "false" if isinstance(value, bool) else "{}" if isinstance(value, dict) else "null"
        now = str(value).lower() if isinstance(value, bool) else value  # as YAML writes it
        out.append(f"loosen data.quality.{rule_set}.{rule} (now {now}; {off} switches it off)")
    sets = sorted({rule_set for rule_set, _ in rules})
    out.append(" or ".join(f"data.quality.{s}.apply_to: none" for s in sets) + " switches "
               + ("that rule set" if len(sets) == 1 else "those rule sets") + " off")
    return out + hints


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
