"""``lmforge eval --compare OTHER``: another model or checkpoint scored on the same validation windows and
task examples, and every metric's paired bootstrap difference (this model minus OTHER), with McNemar's exact
test for the accuracies."""

from __future__ import annotations

import torch

from lmforge.checkpoint.load import LoadedModel, load_model, pick
from lmforge.core.progress import info
from lmforge.data.tokenizer import tokenizer_digest
from lmforge.evaluate import task_metrics as tm
from lmforge.evaluate.config import VAL_LOSS
from lmforge.evaluate.task_eval import EvalSettings, ScoredTask, check_task, score_task
from lmforge.rundir import RunDir
from lmforge.train.validation import window_losses

ACCURACIES = {"acc": "pred", "acc_norm": "pred_norm"}


def other_model(run: RunDir, other: str, device: torch.device | str = "cpu") -> LoadedModel:
    """The model ``other`` names: a checkpoint folder, an exported file, a run directory, or this run's
    latest / best / selected."""
    return load_model(pick(run, other), device)


def compare_models(run: RunDir, mine: LoadedModel, other: str, scored: dict[str, ScoredTask], my_losses,
                   tokenizer, val, windows: int | None, settings: EvalSettings, device: torch.device) -> dict:
    theirs = other_model(run, other, device)
    their_tokenizer = theirs.tokenizer or tokenizer  # an exported file carries no tokenizer: this run's
    same_tokens = theirs.tokenizer_path is None or tokenizer_digest(theirs.tokenizer_path) == tokenizer_digest(run.tokenizer)
    out = {"other": str(theirs.path), "other_step": theirs.step, "confidence": settings.confidence,
           "resamples": settings.resamples, "tasks": {}, "skipped": []}
    kw = dict(resamples=settings.resamples, confidence=settings.confidence, seed=settings.seed)
    if same_tokens and theirs.model.dims.vocab_size == mine.model.dims.vocab_size \
            and theirs.model.dims.context_length >= mine.seq_len:
        their_losses = window_losses(theirs.model, val, mine.seq_len, batch_size=settings.batch_size,
                                     max_windows=windows, device=device)
        out["tasks"]["validation"] = {"kind": "validation", "metrics": tm.paired_difference(
            {VAL_LOSS: my_losses}, {VAL_LOSS: their_losses}, [tm.means_group(VAL_LOSS)], **kw)}
    else:
        out["skipped"].append("validation: the other model reads another tokenizer or shorter windows")
    for name, mine_scored in scored.items():
        task = mine_scored.task
        check_task(task, their_tokenizer, theirs.model.dims.context_length)
        theirs_scored = score_task(theirs.model, their_tokenizer, task, settings, device)
        entry = {"kind": task.kind, "metrics": tm.paired_difference(mine_scored.outcome, theirs_scored.outcome,
                                                                    mine_scored.groups, **kw)}
        tests = {m: tm.mcnemar(mine_scored.outcome, theirs_scored.outcome, key) for m, key in ACCURACIES.items()
                 if key in mine_scored.outcome}
        if tests:
            entry["mcnemar"] = tests
        out["tasks"][name] = entry
    for name, entry in out["tasks"].items():
        for m in ("val_loss", "acc", "exact_match", "loss"):
            if m in entry["metrics"]:
                d = entry["metrics"][m]
                info(f"compare: {name}/{m}: {d['a']:.4f} vs {d['b']:.4f}, difference {d['difference']:+.4f} "
                     f"[{d['low']:+.4f}, {d['high']:+.4f}] ({'significant' if d['significant'] else 'not significant'})")
    return out
