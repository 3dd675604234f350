"""The eval and sample stages. Eval scores the chosen checkpoint (and its seeded initial self) on the
validation windows and on every task, each figure with its bootstrap interval; with ``eval.select`` it first
scores every kept checkpoint and chooses one; with ``--compare`` it scores another model on the same items
and reports the paired differences. Both stages load models through ``checkpoint.load``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lmforge.checkpoint.load import (
    check_fits,
    checkpoint_dims,
    load_model,
    model_tokenizer_path,
    pick,
    require_language_model,
)
from lmforge.core.atomic import atomic_write_json, atomic_write_text
from lmforge.core.progress import info, track, warn
from lmforge.data.packing import INDEX, TokenShards, pack_tokens
from lmforge.data.tokenizer import eos_id_of, load_tokenizer, model_tokenizer, tokenizer_digest
from lmforge.errors import CheckpointError
from lmforge.evaluate import task_metrics as tm
from lmforge.evaluate.compare import compare_models
from lmforge.evaluate.config import BUILTIN, VAL_LOSS
from lmforge.evaluate.report import HEADLINE, summary_markdown, write_task_files
from lmforge.evaluate.selection import Target, select_checkpoint
from lmforge.evaluate.task_eval import EvalSettings, check_task, score_task, summarize
from lmforge.evaluate.task_sources import builtin_tasks, check_select, load_user_tasks
from lmforge.model.decoder import Decoder
from lmforge.model.ensemble import Ensemble
from lmforge.model.generate import generate
from lmforge.recipe import RunConfig
from lmforge.rundir import RunDir
from lmforge.train.budget import loss_rose
from lmforge.train.config import sequence_length
from lmforge.train.validation import window_losses


def checkpoint_for(run: RunDir, cfg: RunConfig, checkpoint: str | None, vocab_size: int, where: str = "lmforge eval"):
    """The checkpoint ``checkpoint`` names (``pick``). One that reads this run's tokens must hold this run's
    model (the recipe's dimensions over the run's vocabulary), unless it lies in this run's directory (a
    compressed variant with fewer channels: the vocabulary must still be the run's). A model with a tokenizer of its own (a Hugging
    Face folder, a fine-tune of one) is scored with that tokenizer, which must fit its embeddings and name an
    end-of-text token; a classifier is refused (``where`` needs a language model). Reads no tensor, so commands
    check it before anything is written."""
    path = pick(run, checkpoint)
    require_language_model(path, where)
    dims = checkpoint_dims(path)
    theirs = own_tokenizer(run, path)
    if theirs is None:
        if path.absolute().is_relative_to(run.root.absolute()) and dims.vocab_size == vocab_size:
            return path  # made from this run (a compressed variant, a merge): its own dimensions, the run's tokens
        check_fits(path, dims, cfg.model.dims(vocab_size), run.root)
        return path
    tokenizer = model_tokenizer(theirs)
    if tokenizer.get_vocab_size() > dims.vocab_size or eos_id_of(tokenizer) is None:
        raise CheckpointError(f"checkpoint {path}: its tokenizer {theirs} does not fit it ({tokenizer.get_vocab_size()} "
                              f"tokens for {dims.vocab_size} embeddings, end-of-text id {eos_id_of(tokenizer)})")
    return path


def own_tokenizer(run: RunDir, path: Path) -> Path | None:
    """The tokenizer of the model at ``path`` when it is not the run's (None: it reads the run's tokens)."""
    theirs = model_tokenizer_path(path)
    return None if theirs is None or tokenizer_digest(theirs) == tokenizer_digest(run.tokenizer) else theirs


def validation_tokens(run: RunDir, cfg: RunConfig, tokenizer: Path | None, stage: str = "eval") -> TokenShards:
    """The run's validation shards, or for a model of another tokenizer the run's validation documents packed
    with it (``<stage>/tokens/<its digest>/``, reused)."""
    if tokenizer is None:
        return TokenShards(run.tokens("val"))
    folder = run.stage_dir(stage) / "tokens" / tokenizer_digest(tokenizer)[:16]
    if not (folder / INDEX).is_file():
        pack_tokens(tokenizer, run.val_docs, folder, cfg.pack)
    return TokenShards(folder)


def check_eval(run: RunDir, cfg: RunConfig) -> list:
    """Before anything is written: the user's task files read and checked, ``eval.select`` names a metric of
    a listed task, and (once the run has its tokenizer) every example fits the model's context. Returns
    those tasks."""
    tasks = load_user_tasks(cfg.eval.tasks, "eval.tasks")
    check_select(cfg.eval.select, tasks, cfg.eval.tasks)
    if tasks and run.tokenizer.exists():
        tokenizer = load_tokenizer(run.tokenizer)
        context_length = cfg.model.dims(tokenizer.get_vocab_size()).context_length
        for task in tasks:
            check_task(task, tokenizer, context_length)
    return tasks


def validation_figures(losses: np.ndarray, seq_len: int, bytes_per_token: float, settings: EvalSettings) -> dict:
    """Loss, perplexity and bits per byte of per-window losses, with the interval over windows (the other two
    are increasing functions of the loss, so their intervals are its interval's ends transformed)."""
    m = tm.metrics_with_intervals({"loss": losses}, [tm.means_group("loss")], resamples=settings.resamples,
                                  confidence=settings.confidence, seed=settings.seed)["loss"]
    ppl = lambda x: math.exp(min(x, 700.0))  # noqa: E731
    bpb = lambda x: x / math.log(2) / bytes_per_token  # noqa: E731
    return {"loss": m["estimate"], "perplexity": ppl(m["estimate"]), "bits_per_byte": bpb(m["estimate"]),
            "tokens": int(len(losses) * seq_len),
            "intervals": {"loss": [m["low"], m["high"]], "perplexity": [ppl(m["low"]), ppl(m["high"])],
                          "bits_per_byte": [bpb(m["low"]), bpb(m["high"])]}}


def stage_eval(run: RunDir, cfg: RunConfig, device: torch.device, checkpoint: str | None = None,
               user_tasks: list | None = None, compare: str | None = None) -> dict:
    user_tasks = check_eval(run, cfg) if user_tasks is None else user_tasks
    settings = EvalSettings.of(cfg.eval)
    eval_dir = run.stage_dir("eval")
    theirs = None if checkpoint is None else own_tokenizer(run, pick(run, checkpoint))
    val = validation_tokens(run, cfg, theirs)
    if theirs is None:
        tokenizer, context_length = load_tokenizer(run.tokenizer), cfg.model.dims(val.vocab_size).context_length
    else:  # another model's tokenizer and context
        tokenizer, context_length = model_tokenizer(theirs), checkpoint_dims(pick(run, checkpoint)).context_length
    tasks, skipped = list(user_tasks), []
    if BUILTIN in cfg.eval.tasks:
        made, skipped = builtin_tasks(run, eval_dir / "tasks", cfg.seed, cfg.eval.builtin_examples, tokenizer,
                                      context_length)
        tasks += made
    check_select(cfg.eval.select, tasks, [])  # the built-in tasks' label sets are known now
    train_seq_len = sequence_length(cfg.train, context_length)
    max_windows = None if cfg.eval.max_tokens is None else max(1, cfg.eval.max_tokens // train_seq_len)

    selection = None
    if cfg.eval.select is not None and checkpoint is None:
        select = cfg.eval.select
        task = None if select.metric == VAL_LOSS else {t.name: t for t in tasks}[select.metric.split("/", 1)[0]]
        for t in [task] if task is not None else []:
            check_task(t, tokenizer, context_length)
        selection = select_checkpoint(run, select, Target(select.metric, task, tokenizer, val, max_windows),
                                      settings, device)
        path = run.root / selection["chosen"]["path"]
    else:
        path = checkpoint_for(run, cfg, checkpoint or "latest", val.vocab_size)
    loaded = load_model(path, device)
    for task in tasks:  # a bad example stops the stage before any scoring
        check_task(task, tokenizer, loaded.model.dims.context_length)
    seq_len = loaded.seq_len
    windows = None if cfg.eval.max_tokens is None else max(1, cfg.eval.max_tokens // seq_len)
    bytes_per_token = val.num_bytes / max(1, val.num_tokens)
    torch.manual_seed(cfg.seed)  # the same seeded initial weights the training run started from
    initial = Decoder(loaded.model.dims).to(device)
    losses = {}
    for name, model in (("before", initial), ("after", loaded.model)):
        losses[name] = window_losses(model, val, seq_len, batch_size=cfg.eval.batch_size, max_windows=windows,
                                     device=device)
    del initial
    results = {"checkpoint": str(loaded.path), "step": loaded.step, "seq_len": seq_len,
               "confidence": settings.confidence, "resamples": settings.resamples,
               **{name: validation_figures(v, seq_len, bytes_per_token, settings) for name, v in losses.items()},
               "tasks": {}, "skipped": skipped}
    scored_tasks = {}
    with track("eval tasks", total=len(tasks), unit="task") as bar:
        for task in tasks:
            scored = score_task(loaded.model, tokenizer, task, settings, device)
            scored_tasks[task.name] = scored
            results["tasks"][task.name] = summarize(scored, settings)
            bar.advance()
    comparison = None
    if compare is not None:
        comparison = compare_models(run, loaded, compare, scored_tasks, losses["after"], tokenizer, val,
                                    windows, settings, device)

    # every figure is computed: write, results.json last
    for name, scored in scored_tasks.items():
        results["tasks"][name]["files"] = write_task_files(scored, results["tasks"][name], eval_dir / name)
    if selection is not None:
        atomic_write_json(run.selection, selection)
    elif checkpoint is None:
        run.selection.unlink(missing_ok=True)  # a selection of an earlier recipe no longer holds
    if comparison is not None:
        atomic_write_json(eval_dir / "compare.json", comparison)
    atomic_write_text(eval_dir / "summary.md", summary_markdown(results, selection, comparison))
    atomic_write_json(run.eval_results, results)
    b, a = results["before"], results["after"]
    info(f"eval: val loss {b['loss']:.4f} -> {a['loss']:.4f}, perplexity {b['perplexity']:.1f} -> "
         f"{a['perplexity']:.1f}, bits/byte {a['bits_per_byte']:.3f} on {a['tokens']:,} tokens")
    for name, task in results["tasks"].items():
        shown = [m for m in HEADLINE[task["kind"]][:2] if m in task["metrics"]]
        info(f"eval: {name}: " + ", ".join(f"{m} {task['metrics'][m]['estimate']:.4f} "
                                            f"[{task['metrics'][m]['low']:.4f}, {task['metrics'][m]['high']:.4f}]"
                                            for m in shown))
    summary = stage_summary(results, selection, comparison)
    return summary | {"warnings": [warn(worse_message(summary, cfg))] if summary["val_loss_worse_than_initial"] else []}


def worse_message(summary: dict, cfg: RunConfig) -> str:
    """The warning when the scored model's validation loss is worse than its seeded initial self's."""
    return (f"eval: the validation loss of {summary['checkpoint']} (step {summary['step']}) is "
            f"{summary['after']['loss']:.4f}, worse than the initial model's {summary['before']['loss']:.4f}: it did "
            f"not learn; try a lower train.lr (now {cfg.train.lr:g}), more training data or fewer train.max_steps "
            f"(now {cfg.train.max_steps:,})")


def stage_summary(results: dict, selection: dict | None, comparison: dict | None) -> dict:
    """``eval/summary.json`` for the run report: the headline figures."""
    out = {"checkpoint": results["checkpoint"], "step": results["step"],
           "before": {k: results["before"][k] for k in ("loss", "perplexity", "bits_per_byte", "tokens")},
           "after": {k: results["after"][k] for k in ("loss", "perplexity", "bits_per_byte", "tokens")},
           "tasks": {name: {m: task["metrics"][m] for m in HEADLINE[task["kind"]] if m in task["metrics"]}
                     for name, task in results["tasks"].items()},
           "val_loss_worse_than_initial": loss_rose(results["before"]["loss"], results["after"]["loss"])}
    if selection is not None:
        out["selected"] = {"metric": selection["metric"], **selection["chosen"],
                           "significant": None if selection["lead"] is None else selection["lead"]["significant"]}
    if comparison is not None:
        out["compared_with"] = comparison["other"]
    return out


def sample_texts(run: RunDir, cfg: RunConfig, device: torch.device, *, prompt: str, checkpoint: str | None = None,
                 use_cache: bool = True, ensemble: list[str] = (), ensemble_mode: str = "probabilities") -> list[dict]:
    """Samples of ``prompt`` with the model ``checkpoint`` names, in its own tokenizer (the run's, or one a
    Hugging Face model brings); with ``ensemble``, that model and these as one (``model.ensemble``: their
    next-token distributions combined by ``ensemble_mode``), which must share the tokenizer."""
    path = checkpoint_for(run, cfg, checkpoint, load_tokenizer(run.tokenizer).get_vocab_size(), "lmforge generate")
    others = [checkpoint_for(run, cfg, other, load_tokenizer(run.tokenizer).get_vocab_size(), "generate --ensemble")
              for other in ensemble]
    mine = tokenizer_digest(own_tokenizer(run, path) or run.tokenizer)
    for i, other in enumerate(others):
        if tokenizer_digest(own_tokenizer(run, other) or run.tokenizer) != mine:
            raise CheckpointError(f"--ensemble {ensemble[i]}: another tokenizer than the model's {path} (an ensemble "
                                  "combines next-token distributions over one vocabulary)")
        if checkpoint_dims(other).vocab_size != checkpoint_dims(path).vocab_size:
            raise CheckpointError(f"--ensemble {ensemble[i]}: a vocabulary of {checkpoint_dims(other).vocab_size}, "
                                  f"the model's {path} {checkpoint_dims(path).vocab_size}")
    loaded = load_model(path, device)
    tokenizer = load_tokenizer(run.tokenizer) if own_tokenizer(run, path) is None else loaded.tokenizer
    model = loaded.model
    if others:
        model = Ensemble([model, *(load_model(other, device).model for other in others)], ensemble_mode)
    g = cfg.generate
    prompt_ids = tokenizer.encode(prompt).ids
    samples = []
    for i in range(g.num_samples):
        new_ids = generate(model, prompt_ids, g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                           top_p=g.top_p, eos_id=eos_id_of(tokenizer), seed=g.seed + i, use_cache=use_cache)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(new_ids), "tokens": len(new_ids)})
    return samples


def stage_sample(run: RunDir, cfg: RunConfig, device: torch.device, checkpoint: str | None = None) -> dict:
    samples = sample_texts(run, cfg, device, prompt=cfg.generate.prompt, checkpoint=checkpoint)
    atomic_write_json(run.samples, {"generate": cfg.generate.model_dump(), "samples": samples})
    return {"samples": len(samples), "tokens": sum(s["tokens"] for s in samples)}
