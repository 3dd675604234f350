"""A task's metrics from its per-example outcomes, each with a bootstrap interval, and the paired difference
of two models on the same examples.

An outcome is a dict of per-example arrays (N,) (``gold``, ``pred``, ``conf``, ``logprob``, ...). A metric
group maps those arrays, indexed as (R, N) (one row per resample; the point estimate is the one row of the
original sample), to {metric name: (R,)}: every metric is computed for all resamples at once, so a
bootstrap of 1,000 resamples is a handful of array operations per chunk, not 1,000 Python calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from lmforge.evaluate.bootstrap import index_batches, interval, mcnemar_exact
from lmforge.evaluate.metrics import scores_from_confusion

Outcome = dict[str, np.ndarray]
Group = Callable[[Outcome], dict[str, np.ndarray]]
ECE_BINS = 15
# lower is better for these (eval.select's default mode and the comparison's "better" side)
LOWER_IS_BETTER = frozenset({"val_loss", "loss", "perplexity", "bits_per_byte", "nll", "brier", "ece", "mce"})


def accuracy_group(pred_key: str, name: str) -> Group:
    """``name``: the share of examples whose ``pred_key`` equals ``gold``."""
    return lambda o: {name: (o[pred_key] == o["gold"]).mean(axis=-1)}


def means_group(*keys: str) -> Group:
    """Each key's mean over the examples (0/1 scores like exact_match, per-example losses)."""
    return lambda o: {k: o[k].mean(axis=-1) for k in keys}


def classification_group(labels: Sequence[str]) -> Group:
    """Precision, recall and F1 per class (``precision/<label>``, ...) and macro / micro / weighted, from
    one confusion matrix per resample (rows gold)."""
    k = len(labels)

    def group(o: Outcome) -> dict[str, np.ndarray]:
        gold, pred = o["gold"], o["pred"]
        rows = np.arange(gold.shape[0])[:, None]
        flat = (rows * k * k + gold * k + pred).ravel()
        cm = np.bincount(flat, minlength=gold.shape[0] * k * k).reshape(-1, k, k)
        s = scores_from_confusion(cm)
        out = {f"{m}_{avg}": s[f"{m}_{avg}"] for m in ("precision", "recall", "f1")
               for avg in ("macro", "micro", "weighted")}
        for c, label in enumerate(labels):
            for m in ("precision", "recall", "f1"):
                out[f"{m}/{label}"] = s[m][:, c]
        return out

    return group


def calibration_group(o: Outcome) -> dict[str, np.ndarray]:
    """ECE and MCE of the top label over ``ECE_BINS`` equal-width bins (``bin``: each example's bin, from its
    confidence ``conf``; ``correct``: 0/1), and the mean per-example Brier score and NLL."""
    conf, correct, bins = o["conf"], o["correct"], o["bin"]
    r, n = conf.shape
    flat = (np.arange(r)[:, None] * ECE_BINS + bins).ravel()
    size = r * ECE_BINS
    count = np.bincount(flat, minlength=size).reshape(r, ECE_BINS)
    gap = np.abs(np.bincount(flat, weights=correct.ravel(), minlength=size)
                 - np.bincount(flat, weights=conf.ravel(), minlength=size)).reshape(r, ECE_BINS)
    mean_gap = np.divide(gap, count, out=np.zeros_like(gap), where=count > 0)
    return {"ece": gap.sum(axis=1) / n, "mce": mean_gap.max(axis=1),
            "brier": o["brier"].mean(axis=-1), "nll": o["nll"].mean(axis=-1)}


def perplexity_group(o: Outcome) -> dict[str, np.ndarray]:
    """Loss per token, perplexity and bits per byte of documents (``logprob``, ``tokens``, ``bytes`` per
    document): ratios of sums, so a resample weighs each document by its length."""
    nll = -o["logprob"].sum(axis=-1)
    loss = nll / o["tokens"].sum(axis=-1)
    return {"loss": loss, "perplexity": np.exp(np.minimum(loss, 700.0)),
            "bits_per_byte": nll / math.log(2) / o["bytes"].sum(axis=-1)}


def ece_bin(conf: np.ndarray) -> np.ndarray:
    """Each confidence's bin: (b/B, (b+1)/B], the first also holding 0 (as ``calibration.reliability_bins``)."""
    return np.searchsorted(np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1], conf, side="left")


def _evaluate(groups: Sequence[Group], outcome: Outcome, idx: np.ndarray | None) -> dict[str, np.ndarray]:
    view = {k: (v[None] if idx is None else v[idx]) for k, v in outcome.items()}
    return {name: values for g in groups for name, values in g(view).items()}


def _size(outcome: Outcome) -> int:
    sizes = {len(v) for v in outcome.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"per-example arrays must have one non-zero length, got {sorted(sizes)}")
    return sizes.pop()


def metrics_with_intervals(outcome: Outcome, groups: Sequence[Group], *, resamples: int, confidence: float,
                           seed: int) -> dict[str, dict]:
    """{metric: {estimate, low, high}}: the estimate on the examples, the percentile interval over
    ``resamples`` bootstrap resamples of the examples (seeded)."""
    n = _size(outcome)
    point = _evaluate(groups, outcome, None)
    parts = [_evaluate(groups, outcome, idx) for idx in index_batches(n, resamples, np.random.default_rng(seed))]
    out = {}
    for name, estimate in point.items():
        i = interval(float(estimate[0]), np.concatenate([p[name] for p in parts]), confidence)
        out[name] = {"estimate": i.estimate, "low": i.low, "high": i.high}
    return out


def paired_difference(a: Outcome, b: Outcome, groups: Sequence[Group], *, resamples: int, confidence: float,
                      seed: int) -> dict[str, dict]:
    """{metric: {a, b, difference, low, high, significant, better}}: the paired bootstrap (the same resampled
    examples for both) of metric(a) - metric(b); significant when the interval leaves out 0."""
    n = _size(a)
    if _size(b) != n:
        raise ValueError(f"paired comparison on different examples: {n} vs {_size(b)}")
    point_a, point_b = _evaluate(groups, a, None), _evaluate(groups, b, None)
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in point_a}
    for idx in index_batches(n, resamples, np.random.default_rng(seed)):
        ra, rb = _evaluate(groups, a, idx), _evaluate(groups, b, idx)
        for name in diffs:
            diffs[name].append(ra[name] - rb[name])
    out = {}
    for name in point_a:
        va, vb = float(point_a[name][0]), float(point_b[name][0])
        i = interval(va - vb, np.concatenate(diffs[name]), confidence)
        significant = not (i.low <= 0.0 <= i.high)
        lower = name.split("/", 1)[0] in LOWER_IS_BETTER
        better = None if not significant else ("a" if (va < vb) == lower else "b")
        out[name] = {"a": va, "b": vb, "difference": i.estimate, "low": i.low, "high": i.high,
                     "significant": significant, "better": better}
    return out


def mcnemar(a: Outcome, b: Outcome, pred_key: str = "pred") -> dict:
    """McNemar's exact test of two models' correctness on the same examples."""
    result = mcnemar_exact(a[pred_key] == a["gold"], b[pred_key] == b["gold"])
    return {"a_only_correct": result.b, "b_only_correct": result.c, "p_value": result.p_value}


def point_estimates(outcome: Outcome, groups: Sequence[Group]) -> dict[str, float]:
    """Every metric on the examples themselves, without intervals (evaluation during training)."""
    return {name: float(values[0]) for name, values in _evaluate(groups, outcome, None).items()}
