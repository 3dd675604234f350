"""A merge scored against its ingredients: the merged model, each input, the base and the inputs' ensemble
(``merge.ensemble``) on the run's validation windows (loss with its bootstrap interval) and on ``eval.tasks``
(each task's headline metrics with intervals; classification tasks also by the inputs' majority vote). Every
model reads the same windows at the same sequence length. Models are loaded one at a time (the ensemble: all
inputs at once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.checkpoint.load import load_model
from lmforge.data.tokenizer import load_tokenizer, model_tokenizer
from lmforge.evaluate import task_metrics as tm
from lmforge.evaluate.config import BUILTIN
from lmforge.evaluate.report import HEADLINE
from lmforge.evaluate.stage import validation_figures, validation_tokens
from lmforge.evaluate.task_eval import EvalSettings, score_task, summarize
from lmforge.evaluate.task_sources import builtin_tasks, load_user_tasks
from lmforge.merge.config import MergeConfig
from lmforge.model.ensemble import Ensemble
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.validation import window_losses

MERGED, ENSEMBLE, VOTE = "merged", "ensemble", "vote"


def _val(run: RunDir, cfg: RunConfig, plan):
    val = validation_tokens(run, cfg, plan.tokenizer, stage="merge")
    return val, (cfg.merge or MergeConfig()).quality.max_windows(cfg.eval, plan.seq_len)


def held_out_loss(run: RunDir, cfg: RunConfig, plan, path: Path, device) -> float:
    """The mean validation-window loss of the model at ``path`` (the greedy soup's criterion)."""
    val, windows = _val(run, cfg, plan)
    model = load_model(path, device).model
    return float(window_losses(model, val, plan.seq_len, batch_size=cfg.eval.batch_size, max_windows=windows,
                               device=device).mean())


def evaluate_merge(run: RunDir, cfg: RunConfig, plan, output: Path, device) -> dict:
    """{"models": {name: {"path", "val": figures, "tasks": {task: metrics}}}, "verdict": ...}."""
    settings = EvalSettings.of(cfg.eval)
    val, windows = _val(run, cfg, plan)
    tokenizer = load_tokenizer(run.tokenizer) if plan.tokenizer is None else model_tokenizer(plan.tokenizer)
    names = (cfg.merge or MergeConfig()).quality.task_names(cfg.eval)
    tasks = load_user_tasks(names, "eval.tasks")
    if BUILTIN in names:
        tasks += builtin_tasks(run, run.stage_dir("merge") / "tasks", cfg.seed, cfg.eval.builtin_examples, tokenizer,
                               plan.dims.context_length)[0]
    bytes_per_token = val.num_bytes / max(1, val.num_tokens)
    named = [(MERGED, output)] + [(f"input {i}", s.path) for i, s in enumerate(plan.inputs)]
    if plan.base is not None:
        named.append(("base", plan.base.path))
    results, scored_inputs = {}, {}

    def score(name: str, path, model) -> None:
        losses = window_losses(model, val, plan.seq_len, batch_size=cfg.eval.batch_size, max_windows=windows,
                               device=device)
        entry = {"path": path, "val": validation_figures(losses, plan.seq_len, bytes_per_token, settings), "tasks": {}}
        for task in tasks:
            scored = score_task(model, tokenizer, task, settings, device)
            metrics = summarize(scored, settings)["metrics"]
            entry["tasks"][task.name] = {m: metrics[m] for m in HEADLINE[task.kind] if m in metrics}
            if name.startswith("input"):
                scored_inputs.setdefault(task.name, []).append(scored)
        results[name] = entry

    for name, path in named:
        score(name, str(path), load_model(path, device).model)
    ensemble = Ensemble([load_model(s.path, device).model for s in plan.inputs], cfg.merge.ensemble)
    score(ENSEMBLE, [str(s.path) for s in plan.inputs], ensemble)
    del ensemble
    votes = {task: majority_vote(scored, settings) for task, scored in scored_inputs.items()
             if scored[0].task.kind == "classification"}
    if votes:
        results[VOTE] = {"path": [str(s.path) for s in plan.inputs], "tasks": votes}
    return {"seq_len": plan.seq_len, "models": results, "verdict": verdict(results)}


def majority_vote(scored: list, settings: EvalSettings) -> dict:
    """Accuracy of the inputs' majority vote on a classification task (a tie goes to the label the voters
    with it give the most probability in sum)."""
    preds = np.stack([s.outcome["pred"] for s in scored])  # (N, examples)
    k = len(scored[0].classes)
    probs = np.stack([[[p["probabilities"][c] for c in s.classes] for p in s.predictions] for s in scored])  # (N, E, K)
    counts = np.stack([(preds == c).sum(0) for c in range(k)], axis=1)  # (E, K)
    mass = np.stack([np.where(preds == c, probs[:, :, c], 0).sum(0) for c in range(k)], axis=1)
    outcome = {"gold": scored[0].outcome["gold"], "pred": _vote(counts, mass)}
    return tm.metrics_with_intervals(outcome, [tm.accuracy_group("pred", "acc")], resamples=settings.resamples,
                                     confidence=settings.confidence, seed=settings.seed)


def _vote(counts: np.ndarray, mass: np.ndarray) -> np.ndarray:
    most = counts == counts.max(1, keepdims=True)
    return np.where(most, mass, -np.inf).argmax(1)


def verdict(results: dict) -> dict:
    """Whether the merge beat every input (and the base) on validation loss and on each task's first headline
    metric."""
    others = [n for n in results if n.startswith("input") or n == "base"]
    merged = results[MERGED]
    out = {"val_loss": merged["val"]["loss"] < min(results[n]["val"]["loss"] for n in others)}
    for task, metrics in merged["tasks"].items():
        metric = next(iter(metrics))
        lower = metric in tm.LOWER_IS_BETTER
        theirs = [results[n]["tasks"][task][metric]["estimate"] for n in others]
        ours = metrics[metric]["estimate"]
        out[f"{task}/{metric}"] = ours < min(theirs) if lower else ours > max(theirs)
    return out


def summary_markdown(summary: dict) -> str:
    """``merge/summary.md``: the method, the models and one row per model with its figures."""
    ev = summary["evaluation"]
    models = ev["models"]
    tasks = sorted({f"{t}/{next(iter(m))}" for e in models.values() for t, m in e["tasks"].items()})
    lines = [f"# Merge: {summary['method']}", "", f"Output: `{summary['output']}`; inputs:", ""]
    lines += [f"- input {i}: `{p}`" for i, p in enumerate(summary["inputs"])]
    if summary["base"]:
        lines.append(f"- base: `{summary['base']}`")
    lines += ["", f"Validation windows of {ev['seq_len']} tokens; intervals are bootstrap ones.", "",
              "| model | val loss | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for name, entry in models.items():
        val = entry.get("val")
        cells = [f"{val['loss']:.4f} [{val['intervals']['loss'][0]:.4f}, {val['intervals']['loss'][1]:.4f}]"
                 if val else "-"]
        for key in tasks:
            task, metric = key.split("/", 1)
            m = entry["tasks"].get(task, {}).get(metric if name != VOTE else "acc")
            cells.append(f"{m['estimate']:.4f} [{m['low']:.4f}, {m['high']:.4f}]" if m else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Did the merge beat every input and the base?", ""]
    lines += [f"- {key}: {'yes' if won else 'no'}" for key, won in ev["verdict"].items()]
    if summary.get("soup"):
        lines += ["", "Greedy soup (inputs in order of held-out loss):", ""]
        lines += [f"- input {s['input']}: loss {s['loss']:.4f}, {'kept' if s['kept'] else 'left out'}"
                  for s in summary["soup"]]
    return "\n".join(lines) + "\n"
