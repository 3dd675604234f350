"""``eval.select``: score every kept checkpoint on one metric (val_loss or <task>/<metric>), each with its
interval, choose the best, and say whether its lead over the runner-up is significant (the paired bootstrap
interval of their difference on the same windows or examples leaves out 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.checkpoint.load import load_model
from lmforge.core.progress import info, track
from lmforge.errors import CheckpointError
from lmforge.evaluate import task_metrics as tm
from lmforge.evaluate.config import VAL_LOSS
from lmforge.evaluate.task_eval import EvalSettings, score_task
from lmforge.evaluate.tasks import Task
from lmforge.rundir import RunDir
from lmforge.train.validation import window_losses


@dataclass(frozen=True)
class Target:
    """What a checkpoint is scored on: the validation windows, or one task."""

    metric: str  # as in eval.select: val_loss or <task>/<metric>
    task: Task | None
    tokenizer: object
    val: object  # TokenShards
    max_windows: int | None

    @property
    def name(self) -> str:  # the metric's name among its group's
        return VAL_LOSS if self.task is None else self.metric.split("/", 1)[1]


def score(model, target: Target, settings: EvalSettings, seq_len: int,
          device: torch.device) -> tuple[tm.Outcome, list[tm.Group]]:
    """The per-window or per-example outcome of ``model`` on ``target``, and the metric groups over it."""
    if target.task is None:
        losses = window_losses(model, target.val, seq_len, batch_size=settings.batch_size,
                               max_windows=target.max_windows, device=device)
        return {VAL_LOSS: losses}, [tm.means_group(VAL_LOSS)]
    scored = score_task(model, target.tokenizer, target.task, settings, device)
    return scored.outcome, scored.groups


def select_checkpoint(run: RunDir, select, target: Target, settings: EvalSettings, device: torch.device) -> dict:
    """``eval/selection.json``'s content: every kept checkpoint's score with its interval, the chosen one
    (ties go to the later step) and its lead over the runner-up."""
    kept = run.list_checkpoints()
    if not kept:
        raise CheckpointError(f"{run.checkpoints}: no checkpoint to select from; train first (lmforge train)")
    mode = select.mode or ("min" if target.name.split("/", 1)[0] in tm.LOWER_IS_BETTER else "max")
    rows = []
    with track("select", total=len(kept), unit="checkpoint") as bar:
        for step, path in kept:
            loaded = load_model(path, device)
            outcome, groups = score(loaded.model, target, settings, loaded.seq_len, device)
            m = tm.metrics_with_intervals(outcome, groups, resamples=settings.resamples,
                                          confidence=settings.confidence, seed=settings.seed)[target.name]
            rows.append({"step": step, "path": str(path.relative_to(run.root)), **m, "_outcome": outcome})
            del loaded
            bar.advance()
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted(rows, key=lambda r: (sign * r["estimate"], -r["step"]))
    chosen = ranked[0]
    lead = None
    if len(ranked) > 1:
        runner = ranked[1]
        d = tm.paired_difference(chosen["_outcome"], runner["_outcome"], groups, resamples=settings.resamples,
                                 confidence=settings.confidence, seed=settings.seed)[target.name]
        lead = {"runner_up": {"step": runner["step"], "path": runner["path"]}, "difference": d["difference"],
                "low": d["low"], "high": d["high"], "significant": d["significant"]}
    info(f"select: step {chosen['step']} by {select.metric} ({mode}) = {chosen['estimate']:.4f}"
         + ("" if lead is None else f"; lead over step {lead['runner_up']['step']} "
            f"{'significant' if lead['significant'] else 'not significant'}"))
    return {"metric": select.metric, "mode": mode, "confidence": settings.confidence,
            "checkpoints": [{k: v for k, v in r.items() if k != "_outcome"} for r in rows],
            "chosen": {"step": chosen["step"], "path": chosen["path"], "estimate": chosen["estimate"]},
            "lead": lead}

