"""Seeded bootstrap confidence intervals and paired significance tests for model comparison.

All resampling is by example index with ``numpy.random.default_rng(seed)``, so a given seed
always gives the same interval. Intervals are percentile intervals: the (1 - c)/2 and
(1 + c)/2 quantiles (numpy's default linear interpolation) of the resampled statistic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_RESAMPLES = 1000
_CHUNK_ELEMENTS = 1 << 22  # bound on resample-index elements held at once (~32 MiB of int64)


@dataclass(frozen=True)
class Interval:
    """A point estimate on the original sample with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int


@dataclass(frozen=True)
class McNemarResult:
    """b: A right and B wrong; c: A wrong and B right; p_value: exact two-sided."""

    b: int
    c: int
    p_value: float


def _check_settings(n_resamples: int, confidence: float) -> None:
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be an integer >= {MIN_RESAMPLES}, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _check_values(*arrays) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    for a in out:
        if a.ndim != 1:
            raise ValueError(f"per-example values must be 1-D, got shape {a.shape}")
        if len(a) == 0:
            raise ValueError("per-example values are empty")
        if not np.all(np.isfinite(a)):
            raise ValueError("per-example values must be finite")
    if len({len(a) for a in out}) > 1:
        raise ValueError(f"length mismatch: {[len(a) for a in out]} examples")
    return out


def interval(estimate: float, stats: np.ndarray, confidence: float) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), confidence, len(stats))


def index_batches(n: int, n_resamples: int, rng: np.random.Generator):
    """The bootstrap resamples of n examples, as (rows, n) arrays of indices drawn with replacement,
    ``n_resamples`` rows in all, chunked to bound memory."""
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``values`` (N,) over ``n_resamples`` bootstrap resamples; shape (n_resamples,)."""
    return np.concatenate([values[idx].mean(axis=1) for idx in index_batches(len(values), n_resamples, rng)])


def bootstrap_mean_ci(values, n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> Interval:
    """Percentile CI for mean(values), values (N,) a per-example statistic (e.g. 0/1 correctness,
    per-example loss). Vectorised: each resample is a row of N indices drawn with replacement."""
    _check_settings(n_resamples, confidence)
    (values,) = _check_values(values)
    stats = _resampled_means(values, n_resamples, np.random.default_rng(seed))
    return interval(values.mean(), stats, confidence)


def paired_bootstrap_ci(values_a, values_b, n_resamples: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> Interval:
    """Percentile CI for mean(values_a) - mean(values_b) on the same N examples.

    Both models are resampled with the same indices (paired), which is the bootstrap of the
    per-example difference d_n = a_n - b_n. An interval excluding 0 indicates a difference.
    """
    _check_settings(n_resamples, confidence)
    a, b = _check_values(values_a, values_b)
    diff = a - b
    stats = _resampled_means(diff, n_resamples, np.random.default_rng(seed))
    return interval(diff.mean(), stats, confidence)


def _check_pairs(gold, *preds) -> list[np.ndarray]:
    arrays = [np.asarray(gold), *(np.asarray(p) for p in preds)]
    for a in arrays:
        if a.ndim != 1:
            raise ValueError(f"gold and predictions must be 1-D, got shape {a.shape}")
    if len({len(a) for a in arrays}) > 1:
        raise ValueError(f"length mismatch: {[len(a) for a in arrays]} examples")
    if len(arrays[0]) == 0:
        raise ValueError("gold and predictions are empty")
    return arrays


def _index_chunks(n: int, n_resamples: int, rng: np.random.Generator):
    for batch in index_batches(n, n_resamples, rng):
        yield from batch


def bootstrap_metric_ci(metric: Callable[[np.ndarray, np.ndarray], float], gold, pred,
                        n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile CI for metric(gold, pred), e.g. macro F1, resampling examples by index:
    statistic_r = metric(gold[idx_r], pred[idx_r]). The metric is called n_resamples times.
    For a mean of a per-example statistic use the vectorised :func:`bootstrap_mean_ci`."""
    _check_settings(n_resamples, confidence)
    gold, pred = _check_pairs(gold, pred)
    rng = np.random.default_rng(seed)
    stats = np.array([metric(gold[idx], pred[idx]) for idx in _index_chunks(len(gold), n_resamples, rng)],
                     dtype=np.float64)
    return interval(metric(gold, pred), stats, confidence)


def paired_bootstrap_metric_ci(metric: Callable[[np.ndarray, np.ndarray], float], gold, pred_a, pred_b,
                               n_resamples: int = 1000, confidence: float = 0.95,
                               seed: int = 0) -> Interval:
    """Percentile CI for metric(gold, pred_a) - metric(gold, pred_b), both evaluated on the same
    resampled example indices in each of the n_resamples replicates."""
    _check_settings(n_resamples, confidence)
    gold, pred_a, pred_b = _check_pairs(gold, pred_a, pred_b)
    rng = np.random.default_rng(seed)
    stats = np.array([metric(gold[i], pred_a[i]) - metric(gold[i], pred_b[i])
                      for i in _index_chunks(len(gold), n_resamples, rng)], dtype=np.float64)
    return interval(metric(gold, pred_a) - metric(gold, pred_b), stats, confidence)


def mcnemar_exact(correct_a, correct_b) -> McNemarResult:
    """McNemar's exact test of two models' correctness (booleans, (N,)) on the same examples.

    With b = #(A right, B wrong), c = #(A wrong, B right) and n = b + c discordant pairs,
    under H0 b ~ Binomial(n, 1/2); the two-sided p-value is
    min(1, 2 * sum_{k=0}^{min(b, c)} C(n, k) / 2^n), the sum computed exactly in integers
    (binomial-coefficient recurrence) and divided once; 1.0 if n = 0.
    """
    a, b_ = (np.asarray(x) for x in (correct_a, correct_b))
    for x in (a, b_):
        if x.ndim != 1:
            raise ValueError(f"correctness vectors must be 1-D, got shape {x.shape}")
        if not np.all((x == 0) | (x == 1)):
            raise ValueError("correctness vectors must hold only booleans / 0 / 1")
    if len(a) != len(b_):
        raise ValueError(f"length mismatch: {len(a)} vs {len(b_)} examples")
    a, b_ = a.astype(bool), b_.astype(bool)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 1.0)
    term = tail = 1  # C(n, 0); C(n, k + 1) = C(n, k) * (n - k) / (k + 1), exact in integers
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)
        tail += term
    return McNemarResult(b, c, min(1.0, 2 * tail / 2**n))
