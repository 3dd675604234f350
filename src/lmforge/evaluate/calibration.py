"""Calibration of probabilistic predictions: ECE, MCE, Brier score, NLL, temperature scaling.

``probs`` is (N, K) with rows summing to 1 (within 1e-6); ``gold`` is (N,) with integer
class indices in [0, K). ``logits`` is (N, K) of unnormalised log-probabilities.
Pure numpy: temperature is fitted by golden-section search, no scipy.
"""

from __future__ import annotations

import math

import numpy as np

SUM_TOLERANCE = 1e-6
NLL_CLIP = 1e-15


def check_probs(probs, gold) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(probs (N, K) float64, gold (N,) int64)``."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, K) with K >= 2, got {probs.shape}")
    if gold.ndim != 1:
        raise ValueError(f"gold must be 1-D, got shape {gold.shape}")
    if len(probs) != len(gold):
        raise ValueError(f"length mismatch: {len(probs)} rows of probs vs {len(gold)} gold labels")
    if len(gold) == 0:
        raise ValueError("probs and gold are empty")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1 + SUM_TOLERANCE:
        raise ValueError("probs must be finite and lie in [0, 1]")
    row_err = np.abs(probs.sum(axis=1) - 1.0)
    if row_err.max() > SUM_TOLERANCE:
        bad = int(np.argmax(row_err))
        raise ValueError(f"probs rows must sum to 1 within {SUM_TOLERANCE}: row {bad} sums to "
                         f"{probs[bad].sum():.9g}")
    return probs, _check_gold(gold, probs.shape[1])


def _check_gold(gold: np.ndarray, k: int) -> np.ndarray:
    """gold (N,) as int64 class indices, each in [0, k)."""
    if not np.issubdtype(gold.dtype, np.integer):
        if not np.all(np.mod(gold, 1) == 0):
            raise ValueError("gold must hold integer class indices")
        gold = gold.astype(np.int64)
    if gold.min() < 0 or gold.max() >= k:
        outside = np.unique(gold[(gold < 0) | (gold >= k)]).tolist()
        raise ValueError(f"gold contains labels outside the label set 0..{k - 1}: {outside}")
    return gold.astype(np.int64)


def reliability_bins(probs, gold, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics of the top-label confidence conf_n = max_k probs[n, k].

    Bins are equal-width over [0, 1]: bin b is (b/B, (b+1)/B], and the first bin also
    includes 0. Returns arrays of shape (B,): ``edges`` (B + 1,), ``count``, ``confidence``
    (mean conf in the bin), ``accuracy`` (fraction with argmax == gold); the last two are 0.0
    for empty bins. argmax breaks ties towards the lower class index.
    """
    probs, gold = check_probs(probs, gold)
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == gold).astype(np.float64)  # (N,)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # number of interior edges strictly below conf -> bin index with (lo, hi] bins
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # (N,)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    safe = np.maximum(count, 1.0)
    return {
        "edges": edges,
        "count": count.astype(np.int64),
        "confidence": np.bincount(idx, weights=conf, minlength=n_bins) / safe,
        "accuracy": np.bincount(idx, weights=correct, minlength=n_bins) / safe,
    }


def expected_calibration_error(probs, gold, n_bins: int = 15) -> float:
    """ECE = sum over bins b of (n_b / N) * |acc_b - conf_b| (see :func:`reliability_bins`)."""
    bins = reliability_bins(probs, gold, n_bins)
    weight = bins["count"] / bins["count"].sum()
    return float(np.sum(weight * np.abs(bins["accuracy"] - bins["confidence"])))


def maximum_calibration_error(probs, gold, n_bins: int = 15) -> float:
    """MCE = max over non-empty bins b of |acc_b - conf_b| (see :func:`reliability_bins`)."""
    bins = reliability_bins(probs, gold, n_bins)
    gap = np.abs(bins["accuracy"] - bins["confidence"])[bins["count"] > 0]
    return float(gap.max())


def brier_score(probs, gold) -> float:
    """Multiclass Brier score: mean over n of sum over k of (probs[n, k] - [gold_n == k])^2.

    Ranges over [0, 2]. For K = 2 it is twice sklearn's binary ``brier_score_loss`` on the
    positive-class probability, because both classes' squared errors are equal and summed.
    """
    probs, gold = check_probs(probs, gold)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(gold)), gold] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def negative_log_likelihood(probs, gold, eps: float = NLL_CLIP) -> float:
    """NLL = mean over n of -log(clip(probs[n, gold_n], eps, 1 - eps)), natural log.

    ``eps`` defaults to 1e-15 (sklearn's historical ``log_loss`` default; sklearn >= 1.5
    clips at the dtype's machine epsilon instead, which only matters for p < 1e-15).
    """
    probs, gold = check_probs(probs, gold)
    p = np.clip(probs[np.arange(len(gold)), gold], eps, 1.0 - eps)
    return float(-np.mean(np.log(p)))


def _check_logits(logits, gold=None) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite")
    if gold is not None and len(np.asarray(gold)) != len(logits):
        raise ValueError(f"length mismatch: {len(logits)} rows of logits vs {len(np.asarray(gold))} gold labels")
    return logits


def log_softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) along the last axis, computed stably; shape (N, K)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = _check_logits(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T): probabilities of shape (N, K), rows summing to 1."""
    return np.exp(log_softmax(logits, temperature))


def temperature_nll(logits, gold, temperature: float) -> float:
    """Mean -log softmax(logits / T)[gold], exact (unclipped) from the logits."""
    logp = log_softmax(logits, temperature)
    return float(-np.mean(logp[np.arange(len(logp)), gold]))


def fit_temperature(logits, gold, bounds: tuple[float, float] = (0.05, 20.0),
                    tol: float = 1e-5) -> tuple[float, np.ndarray]:
    """Temperature scaling: T* = argmin over T in ``bounds`` of NLL(softmax(logits / T), gold).

    Fit on held-out data. NLL is convex in 1/T, hence unimodal in log T, so a golden-section
    search over log T finds the minimum; it stops when the bracket in log T is below ``tol``.
    Returns ``(T*, softmax(logits / T*))``. Dividing by T > 0 keeps each row's argmax, so
    accuracy is unchanged. A T* at a bound means the optimum may lie outside ``bounds``.
    """
    logits = _check_logits(logits, gold)
    gold = np.asarray(gold)
    if gold.ndim != 1 or len(gold) == 0:
        raise ValueError(f"gold must be a non-empty 1-D array, got shape {gold.shape}")
    gold = _check_gold(gold, logits.shape[1])
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < lo < hi, got {bounds}")
    a, b = math.log(lo), math.log(hi)
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = temperature_nll(logits, gold, math.exp(c)), temperature_nll(logits, gold, math.exp(d))
    while b - a > tol:
        if fc <= fd:  # minimum in [a, d]
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = temperature_nll(logits, gold, math.exp(c))
        else:  # minimum in [c, b]
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = temperature_nll(logits, gold, math.exp(d))
    candidates = [(temperature_nll(logits, gold, t), t) for t in (lo, math.exp((a + b) / 2), hi)]
    t_best = min(candidates)[1]
    return t_best, softmax(logits, t_best)
