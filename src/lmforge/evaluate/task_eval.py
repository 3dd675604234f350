"""Score a model on one task: every example's log-likelihoods (or greedy continuation, or rolling
log-likelihood), turned into per-example outcomes, predictions and metrics with intervals.

- multiple_choice: each choice scored as the continuation of the context (lm-eval's rule, ``scoring``);
  ``acc`` takes the largest summed log-probability, ``acc_norm`` the largest per character of the choice
  (lm-eval's definition); the probability over the choices is the softmax of the log-likelihoods.
- classification: each label's word scored after the prompt (template, few-shot demonstrations); the
  prediction is the most likely label, with precision / recall / F1 per class and averaged.
- generation: greedy continuation cut at the task's stop strings; ``exact_match`` (equal once surrounding
  whitespace is stripped) and ``prefix_match`` (the stripped continuation starts with the stripped answer).
- perplexity: each document's rolling log-likelihood; loss, perplexity and bits per byte over documents.

Calibration (multiple choice, classification): ECE / MCE / Brier / NLL of the probabilities over all
examples, and temperature scaling fitted by NLL on a seeded calibration split, with ECE before and after
on the held-out rest (dividing by a temperature never changes a prediction, so accuracy is unchanged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer

from lmforge.errors import DataError
from lmforge.evaluate import task_metrics as tm
from lmforge.evaluate.calibration import expected_calibration_error, fit_temperature, reliability_bins, softmax
from lmforge.evaluate.metrics import confusion_matrix
from lmforge.evaluate.scoring import (encode_pair, end_of_text, greedy_continuations, rolling_loglikelihood,
                                      score_token_pairs)
from lmforge.evaluate.tasks import Task
from lmforge.model.decoder import Decoder

PAD_LOGIT = -1e9  # a choice an example does not have: probability 0 after any temperature in the fit's bounds
NLL_CLIP = 1e-15
TEMPERATURE_BOUNDS = (0.01, 1000.0)  # summed log-likelihoods of long choices can be far apart: wide bounds


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 8
    resamples: int = 1000
    confidence: float = 0.95
    calibration_fraction: float = 0.5
    rolling_stride: int | None = None
    seed: int = 0

    @classmethod
    def of(cls, eval_cfg) -> "EvalSettings":
        return cls(eval_cfg.batch_size, eval_cfg.resamples, eval_cfg.confidence, eval_cfg.calibration_fraction,
                   eval_cfg.rolling_stride, eval_cfg.seed)


@dataclass
class ScoredTask:
    task: Task
    outcome: tm.Outcome  # per-example arrays for the metrics
    predictions: list[dict]  # per example, for predictions.jsonl
    logits: np.ndarray | None = None  # (N, K) log-likelihoods (PAD_LOGIT where an example has fewer choices)
    classes: list[str] = field(default_factory=list)  # classification: the labels, in index order

    @property
    def groups(self) -> list[tm.Group]:
        kind = self.task.kind
        if kind == "multiple_choice":
            return [tm.accuracy_group("pred", "acc"), tm.accuracy_group("pred_norm", "acc_norm"),
                    tm.calibration_group]
        if kind == "classification":
            return [tm.accuracy_group("pred", "acc"), tm.classification_group(self.classes), tm.calibration_group]
        if kind == "generation":
            return [tm.means_group("exact_match", "prefix_match")]
        return [tm.perplexity_group]


def kind_metrics(kind: str, labels: list[str] | None = None) -> list[str]:
    """The metrics a task of ``kind`` reports (classification: per class of ``labels`` too)."""
    calibration = ["ece", "mce", "brier", "nll"]
    if kind == "multiple_choice":
        return ["acc", "acc_norm", *calibration]
    if kind == "classification":
        scores = [f"{m}_{a}" for m in ("precision", "recall", "f1") for a in ("macro", "micro", "weighted")]
        per_class = [f"{m}/{label}" for label in labels or [] for m in ("precision", "recall", "f1")]
        return ["acc", *scores, *per_class, *calibration]
    if kind == "generation":
        return ["exact_match", "prefix_match"]
    return ["loss", "perplexity", "bits_per_byte"]


def metric_names(task: Task) -> list[str]:
    """The metrics ``task`` reports (for checking ``eval.select`` before any scoring)."""
    return kind_metrics(task.kind, task.spec.labels)


def encode_requests(task: Task, tokenizer: Tokenizer, context_length: int) -> list[list[tuple[list[int], list[int]]]]:
    """Multiple choice and classification: per example, the (context ids, continuation ids) of each choice or
    label (``encode_example``)."""
    return [encode_example(task, i, tokenizer, context_length) for i in range(len(task.examples))]


def encode_example(task: Task, i: int, tokenizer: Tokenizer, context_length: int) -> list[tuple[list[int], list[int]]]:
    """The (context ids, continuation ids) of each choice or label of example i; an example the model cannot
    read whole (longer than ``context_length`` + 1 tokens) or a continuation of no tokens is a DataError
    naming its file and line."""
    ex = task.examples[i]
    if task.kind == "multiple_choice":
        requests = [(ex.context, choice) for choice in ex.choices]
    else:
        prompt = task.prompt(ex)
        requests = [(prompt, word) for word in task.verbalizers.values()]
    pairs = []
    for context, continuation in requests:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not continuation_ids:
            raise DataError(f"{task.where(i)}: {continuation!r} encodes to no tokens: there is nothing to score")
        n = len(context_ids) + len(continuation_ids) - 1
        if n > context_length:
            raise DataError(f"{task.where(i)}: example {ex.id!r} is {n} tokens with {continuation!r}, longer "
                            f"than the model's context of {context_length} tokens")
        pairs.append((context_ids, continuation_ids))
    return pairs


def fitting(task: Task, tokenizer: Tokenizer, context_length: int) -> tuple[Task, int]:
    """A built-in task cut to the examples the model can read whole (a user's task is refused instead), and
    how many were left out."""
    keep = []
    for i in range(len(task.examples)):
        try:
            encode_example(task, i, tokenizer, context_length)
            keep.append(i)
        except DataError:
            pass
    lines = tuple(task.lines[i] for i in keep) if task.lines else ()
    return dataclasses.replace(task, examples=tuple(task.examples[i] for i in keep), lines=lines), \
        len(task.examples) - len(keep)


def check_generation(task: Task, tokenizer: Tokenizer, context_length: int) -> None:
    for i, ex in enumerate(task.examples):
        n = len(tokenizer.encode(ex.prompt, add_special_tokens=False).ids) + task.spec.max_new_tokens
        if n > context_length:
            raise DataError(f"{task.where(i)}: example {ex.id!r} is {n} tokens with max_new_tokens "
                            f"{task.spec.max_new_tokens}, longer than the model's context of {context_length} tokens")


def check_task(task: Task, tokenizer: Tokenizer, context_length: int) -> None:
    """Every example fits the model (before any scoring, so that a bad example stops the stage first)."""
    if task.kind in ("multiple_choice", "classification"):
        encode_requests(task, tokenizer, context_length)
    elif task.kind == "generation":
        check_generation(task, tokenizer, context_length)
    else:
        for i, ex in enumerate(task.examples):
            if not tokenizer.encode(ex.text, add_special_tokens=False).ids:
                raise DataError(f"{task.where(i)}: example {ex.id!r}: the text encodes to no tokens")


def score_task(model: Decoder, tokenizer: Tokenizer, task: Task, settings: EvalSettings = EvalSettings(),
               device: torch.device | str | None = None) -> ScoredTask:
    context_length = model.dims.context_length
    if task.kind in ("multiple_choice", "classification"):
        per_example = encode_requests(task, tokenizer, context_length)
        flat = [pair for pairs in per_example for pair in pairs]
        scores = score_token_pairs(model, flat, settings.batch_size, device)
        lls, start = [], 0
        for pairs in per_example:
            lls.append(np.array([s.logprob for s in scores[start:start + len(pairs)]]))
            start += len(pairs)
        return choice_outcome(task, lls)
    if task.kind == "generation":
        check_generation(task, tokenizer, context_length)
        texts = greedy_continuations(model, tokenizer, [ex.prompt for ex in task.examples],
                                     task.spec.max_new_tokens, task.spec.stop)
        exact = np.array([t.strip() == ex.answer.strip() for t, ex in zip(texts, task.examples)], dtype=np.float64)
        prefix = np.array([t.strip().startswith(ex.answer.strip()) for t, ex in zip(texts, task.examples)],
                          dtype=np.float64)
        predictions = [{"id": ex.id, "gold": ex.answer, "prediction": t, "exact_match": bool(e),
                        "prefix_match": bool(p)} for ex, t, e, p in zip(task.examples, texts, exact, prefix)]
        return ScoredTask(task, {"exact_match": exact, "prefix_match": prefix}, predictions)
    logprob, tokens, n_bytes, predictions = [], [], [], []
    stride = settings.rolling_stride or context_length
    for i, ex in enumerate(task.examples):
        ids = tokenizer.encode(ex.text, add_special_tokens=False).ids
        if not ids:
            raise DataError(f"{task.where(i)}: example {ex.id!r}: the text encodes to no tokens")
        s = rolling_loglikelihood(model, ids, device=device, stride=min(stride, context_length),
                                  batch_size=settings.batch_size, prefix_id=end_of_text(tokenizer))
        logprob.append(s.logprob)
        tokens.append(s.n_tokens)
        n_bytes.append(len(ex.text.encode("utf-8")))
        predictions.append({"id": ex.id, "logprob": s.logprob, "tokens": s.n_tokens, "bytes": n_bytes[-1]})
    outcome = {"logprob": np.array(logprob), "tokens": np.array(tokens, dtype=np.float64),
               "bytes": np.array(n_bytes, dtype=np.float64)}
    return ScoredTask(task, outcome, predictions)


def choice_outcome(task: Task, lls: list[np.ndarray]) -> ScoredTask:
    """Outcome, predictions and padded logits of multiple choice / classification from the per-example
    log-likelihoods of the choices (labels)."""
    mc = task.kind == "multiple_choice"
    classes = [] if mc else list(task.verbalizers)
    width = max(len(ll) for ll in lls)
    logits = np.full((len(lls), width), PAD_LOGIT)
    cols = {k: [] for k in ("gold", "pred", "pred_norm", "conf", "correct", "brier", "nll")}
    predictions = []
    for i, (ex, ll) in enumerate(zip(task.examples, lls)):
        logits[i, :len(ll)] = ll
        probs = np.exp(ll - ll.max())
        probs /= probs.sum()
        gold = ex.answer if mc else classes.index(ex.label)
        pred = int(np.argmax(ll))  # the first of equals, as lm-eval's np.argmax
        onehot = np.zeros(len(ll))
        onehot[gold] = 1.0
        cols["gold"].append(gold)
        cols["pred"].append(pred)
        cols["conf"].append(probs.max())
        cols["correct"].append(float(pred == gold))
        cols["brier"].append(float(((probs - onehot) ** 2).sum()))
        cols["nll"].append(-np.log(np.clip(probs[gold], NLL_CLIP, 1 - NLL_CLIP)))
        if mc:
            pred_norm = int(np.argmax(ll / np.array([float(len(c)) for c in ex.choices])))
            cols["pred_norm"].append(pred_norm)
            predictions.append({"id": ex.id, "gold": gold, "prediction": pred, "prediction_norm": pred_norm,
                                "correct": pred == gold, "probabilities": probs.tolist(),
                                "loglikelihoods": ll.tolist()})
        else:
            predictions.append({"id": ex.id, "gold": ex.label, "prediction": classes[pred], "correct": pred == gold,
                                "probabilities": dict(zip(classes, probs.tolist())),
                                "loglikelihoods": dict(zip(classes, ll.tolist()))})
    outcome = {k: np.array(v, dtype=np.int64 if k in ("gold", "pred", "pred_norm") else np.float64)
               for k, v in cols.items() if v}
    outcome["bin"] = tm.ece_bin(outcome["conf"])
    return ScoredTask(task, outcome, predictions, logits, classes)


def summarize(scored: ScoredTask, settings: EvalSettings) -> dict:
    """The task's entry in ``eval/results.json``: its metrics with intervals, and for classification the
    confusion matrix, for multiple choice and classification the temperature scaling."""
    out = {"kind": scored.task.kind, "path": str(scored.task.path), "examples": len(scored.task.examples),
           "metrics": tm.metrics_with_intervals(scored.outcome, scored.groups, resamples=settings.resamples,
                                                confidence=settings.confidence, seed=settings.seed)}
    if scored.task.kind == "classification":
        matrix = confusion_matrix(scored.outcome["gold"], scored.outcome["pred"], list(range(len(scored.classes))))
        out["confusion"] = {"labels": scored.classes, "matrix": matrix.tolist()}
    if scored.logits is not None:
        out["calibration"] = temperature_scaling(scored, settings)
    return out


def temperature_scaling(scored: ScoredTask, settings: EvalSettings) -> dict:
    """The temperature fitted by NLL on a seeded ``calibration_fraction`` of the examples, and the ECE
    (and reliability bins) before and after it on the others."""
    logits, gold = scored.logits, scored.outcome["gold"]
    n = len(gold)
    n_fit = int(round(settings.calibration_fraction * n))
    if logits.shape[1] < 2 or n_fit < 2 or n - n_fit < 2:
        return {"temperature": None, "reason": f"too few examples ({n}) or choices to fit and hold out"}
    order = np.random.default_rng(settings.seed).permutation(n)
    fit, held = order[:n_fit], order[n_fit:]
    temperature, _ = fit_temperature(logits[fit], gold[fit], bounds=TEMPERATURE_BOUNDS)
    before, after = softmax(logits[held]), softmax(logits[held], temperature)
    return {"temperature": temperature, "fit_examples": int(n_fit), "heldout_examples": int(n - n_fit),
            "ece_before": expected_calibration_error(before, gold[held]),
            "ece_after": expected_calibration_error(after, gold[held]),
            "accuracy_before": float((before.argmax(1) == gold[held]).mean()),
            "accuracy_after": float((after.argmax(1) == gold[held]).mean()),
            "bins_before": _bins(before, gold[held]), "bins_after": _bins(after, gold[held])}


def _bins(probs: np.ndarray, gold: np.ndarray) -> dict:
    return {k: v.tolist() for k, v in reliability_bins(probs, gold, tm.ECE_BINS).items()}
