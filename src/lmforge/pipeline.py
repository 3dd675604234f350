"""The stages of a run, each rerunnable alone on a run directory, and the whole run in order.

Stages hand off through files in the run directory only. A finished stage is recorded in stages.json
with a fingerprint of the recipe sections it depends on; it is skipped when the fingerprint matches,
and a changed recipe for a finished stage is an error unless that stage is redone (``--redo``).
"""

from __future__ import annotations

import json
import shutil

from lmforge.core.atomic import atomic_write_json, atomic_write_text
from lmforge.core.progress import info
from lmforge.data.curate import curate
from lmforge.data.packing import TokenShards, pack_tokens
from lmforge.data.tokenizer import train_tokenizer
from lmforge.errors import DataError, LmforgeError
from lmforge.recipe import RunConfig
from lmforge.rundir import STAGES, RunDir

# The recipe sections each stage depends on (a stage also depends on everything its inputs did).
STAGE_SECTIONS = {
    "curate": ("seed", "data"),
    "tokenizer": ("seed", "data", "tokenizer"),
    "pack": ("seed", "data", "tokenizer", "pack"),
    "train": ("seed", "data", "tokenizer", "pack", "model", "train"),
    "eval": ("seed", "data", "tokenizer", "pack", "model", "train", "eval"),
    "sample": ("seed", "data", "tokenizer", "pack", "model", "train", "generate"),
}


def fingerprint(cfg: RunConfig, stage: str) -> str:
    return cfg.section_hash(*STAGE_SECTIONS[stage])


def prepare(run: RunDir, cfg: RunConfig, *, redo: tuple[str, ...] = (), resume: bool = False) -> None:
    """Check that the recipe fits what the run directory already holds, then record the recipe.

    Nothing is written before the checks pass, so a rejected invocation leaves the run untouched.
    """
    for stage in redo:
        if stage not in STAGES:
            raise LmforgeError(f"--redo {stage}: unknown stage (stages: {', '.join(STAGES)})")
    first_redo = min((STAGES.index(s) for s in redo), default=len(STAGES))
    done = run.stages()
    for i, stage in enumerate(STAGES[:first_redo]):
        if stage in ("eval", "sample") or stage not in done:
            continue
        if done[stage].get("fingerprint") != fingerprint(cfg, stage):
            if stage == "train" and resume:
                continue  # continuing training with new settings: the checkpoint's resume key decides
            changed = ", ".join(STAGE_SECTIONS[stage])
            raise LmforgeError(
                f"{run.root}: the recipe differs from the one the {stage} stage ran with (one of: {changed}); "
                f"pass --redo {stage} to redo it and the stages after it, or choose a new run name"
            )
    run.root.mkdir(parents=True, exist_ok=True)
    if run.clean_temporaries():
        info("removed leftovers of an interrupted write")
    if first_redo < len(STAGES):
        run.invalidate(STAGES[first_redo])
        if first_redo <= STAGES.index("train"):
            shutil.rmtree(run.checkpoints, ignore_errors=True)
            run.metrics.unlink(missing_ok=True)
    atomic_write_text(run.recipe, cfg.to_yaml())


def _skip(run: RunDir, cfg: RunConfig, stage: str) -> bool:
    if run.stage_fingerprint(stage) == fingerprint(cfg, stage):
        info(f"[dim]{stage}: already done, skipped[/dim]")
        return True
    return False


def stage_data(run: RunDir, cfg: RunConfig) -> None:
    """curate -> tokenizer -> pack."""
    if not _skip(run, cfg, "curate"):
        run.invalidate("curate")
        stats = curate(cfg.data, cfg.seed, run.data)
        run.mark_done("curate", fingerprint(cfg, "curate"))
        info(f"curate: {_doc_line(stats)}")
    if not _skip(run, cfg, "tokenizer"):
        run.invalidate("tokenizer")
        tokenizer = train_tokenizer(cfg.tokenizer, run.train_docs, run.tokenizer)
        run.mark_done("tokenizer", fingerprint(cfg, "tokenizer"))
        info(f"tokenizer: byte-level BPE with {tokenizer.get_vocab_size():,} tokens -> {run.tokenizer}")
    if not _skip(run, cfg, "pack"):
        run.invalidate("pack")
        for split, docs in (("train", run.train_docs), ("val", run.val_docs)):
            index = pack_tokens(run.tokenizer, docs, run.tokens(split), cfg.pack)
            info(f"pack {split}: {index['num_tokens']:,} tokens in {len(index['shards'])} shard(s)")
        run.mark_done("pack", fingerprint(cfg, "pack"))


def check_data_fits(run: RunDir, cfg: RunConfig, error: type[LmforgeError] = LmforgeError) -> None:
    """Data stages already done in ``run`` must fit the recipe: runs that share its token shards (tuning
    trials, an optimizer comparison) train on them."""
    done = run.stages()
    for stage in ("curate", "tokenizer", "pack"):
        if stage in done and done[stage].get("fingerprint") != fingerprint(cfg, stage):
            raise error(f"{run.root}: the recipe's data sections differ from the ones the {stage} stage ran with; "
                        f"run lmforge data --redo {stage} first, or choose a new run name")


def prepare_shared_data(run: RunDir, cfg: RunConfig, error: type[LmforgeError] = LmforgeError) -> None:
    """The run's curate, tokenizer and pack stages, once, for runs that share its token shards."""
    check_data_fits(run, cfg, error)
    run.root.mkdir(parents=True, exist_ok=True)
    if not run.recipe.exists():
        atomic_write_text(run.recipe, cfg.to_yaml())
    stage_data(run, cfg)


def documents_kept(stats: dict) -> int:
    return sum(split["documents"] for split in stats["splits"].values())


def _doc_line(stats: dict) -> str:
    return (f"{stats['documents_read']:,} documents read, {documents_kept(stats):,} kept "
            f"({stats['splits']['train']['documents']:,} train / {stats['splits']['val']['documents']:,} val)")


def require_tokens(run: RunDir) -> None:
    for split in ("train", "val"):
        if not (run.tokens(split) / "index.json").exists():
            raise DataError(f"{run.tokens(split)}: no token shards; run the data stage first (lmforge data)")


def load_json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LmforgeError(f"{path}: cannot read ({exc.__class__.__name__})") from None


def write_summary(run: RunDir, cfg: RunConfig) -> dict:
    """Collect the headline numbers of a finished run into summary.json and return them."""
    stats = load_json(run.data_stats) if run.data_stats.exists() else {}
    train_tokens = TokenShards(run.tokens("train")).num_tokens
    val_tokens = TokenShards(run.tokens("val")).num_tokens
    train_info = run.stages().get("train", {})
    results = load_json(run.eval_results) if run.eval_results.exists() else {}
    summary = {
        "run_dir": str(run.root),
        "documents_read": stats.get("documents_read"),
        "documents_kept": documents_kept(stats) if stats else None,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "parameters": train_info.get("parameters"),
        "steps": train_info.get("steps"),
        "tokens_per_s": train_info.get("tokens_per_s"),
        "before": results.get("before"),
        "after": results.get("after"),
    }
    atomic_write_json(run.summary, summary)
    return summary
