"""Classification metrics on label vectors: accuracy, precision / recall / F1, confusion matrix.

Pure numpy, no torch. Conventions follow scikit-learn so results can be checked against it:
confusion-matrix rows are gold labels and columns are predictions, and a ratio whose
denominator is zero (e.g. precision of a class that is never predicted) is 0.0, which is
sklearn's ``zero_division="warn"`` value (without the warning).

Calibration metrics live in :mod:`lmforge.evaluate.calibration`, confidence intervals and
significance tests in :mod:`lmforge.evaluate.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AVERAGES = (None, "macro", "micro", "weighted")


def check_labels(gold, pred) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(gold, pred)`` as 1-D arrays of equal, non-zero length."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    if gold.ndim != 1 or pred.ndim != 1:
        raise ValueError(f"gold and pred must be 1-D, got shapes {gold.shape} and {pred.shape}")
    if len(gold) != len(pred):
        raise ValueError(f"length mismatch: {len(gold)} gold labels vs {len(pred)} predictions")
    if len(gold) == 0:
        raise ValueError("gold and pred are empty")
    return gold, pred


def _label_index(gold: np.ndarray, pred: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map gold and pred onto positions in ``labels``; returns (labels, gold_idx, pred_idx).

    ``labels=None`` means the sorted union of the labels seen in gold and pred.
    """
    if labels is None:
        labels = np.union1d(gold, pred)
    else:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
        if len(np.unique(labels)) != len(labels):
            raise ValueError(f"labels contain duplicates: {labels.tolist()}")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    out = []
    for name, values in (("gold", gold), ("pred", pred)):
        pos = np.clip(np.searchsorted(sorted_labels, values), 0, len(labels) - 1)
        bad = sorted_labels[pos] != values
        if bad.any():
            outside = np.unique(values[bad]).tolist()
            raise ValueError(f"{name} contains labels outside the label set {labels.tolist()}: {outside}")
        out.append(order[pos])
    return labels, out[0], out[1]


def accuracy(gold, pred) -> float:
    """Fraction of examples with ``pred == gold``: mean over i of [pred_i == gold_i]. gold, pred: (N,)."""
    gold, pred = check_labels(gold, pred)
    return float(np.mean(gold == pred))


def confusion_matrix(gold, pred, labels: Sequence) -> np.ndarray:
    """Counts C[i, j] = #{n : gold_n == labels[i] and pred_n == labels[j]}; shape (K, K), int64.

    ``labels`` is required so that a class absent from both gold and pred still gets its
    (all-zero) row and column, and the row order is the caller's, as in sklearn.
    """
    gold, pred = check_labels(gold, pred)
    labels, g, p = _label_index(gold, pred, labels)
    k = len(labels)
    return np.bincount(g * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0.0 where den == 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def precision_recall_f1(gold, pred, labels: Sequence | None = None, average: str | None = None):
    """Precision, recall, F1 and support, per class or averaged; mirrors sklearn's
    ``precision_recall_fscore_support`` with ``zero_division`` giving 0.0.

    Per class c (tp, fp, fn counted over the N examples):
      precision_c = tp / (tp + fp),  recall_c = tp / (tp + fn),
      f1_c = 2 tp / (2 tp + fp + fn)  (the harmonic mean of precision and recall), support_c = tp + fn.
    Averages over the K classes in ``labels`` (default: sorted union of gold and pred):
      "macro": unweighted mean of the per-class values;
      "weighted": mean weighted by support_c / sum(support);
      "micro": the same formulas on tp, fp, fn summed over classes (equals accuracy when
      ``labels`` covers every class that occurs).
    Returns ``(precision, recall, f1, support)``: arrays of shape (K,) for ``average=None``,
    floats with ``support=None`` otherwise (as sklearn does).
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    gold, pred = check_labels(gold, pred)
    cm = confusion_matrix(gold, pred, _label_index(gold, pred, labels)[0])  # (K, K)
    scores = scores_from_confusion(cm)
    if average is None:
        return scores["precision"], scores["recall"], scores["f1"], scores["support"]
    return (float(scores[f"precision_{average}"]), float(scores[f"recall_{average}"]),
            float(scores[f"f1_{average}"]), None)


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Every score of :func:`precision_recall_f1` from confusion matrices ``cm`` (..., K, K) (rows gold),
    vectorized over the leading axes (e.g. one matrix per bootstrap resample): ``precision``, ``recall``,
    ``f1``, ``support`` (..., K) per class and ``<score>_<average>`` (...) for macro, micro and weighted,
    plus ``accuracy`` (...)."""
    cm = np.asarray(cm)
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)  # (..., K)
    fp = cm.sum(axis=-2) - tp  # predicted c, gold not c
    fn = cm.sum(axis=-1) - tp  # gold c, predicted not c
    support = tp + fn
    out = {"precision": _safe_div(tp, tp + fp), "recall": _safe_div(tp, tp + fn),
           "f1": _safe_div(2 * tp, 2 * tp + fp + fn), "support": support.astype(np.int64)}
    total = support.sum(axis=-1, keepdims=True)
    weights = _safe_div(support, np.broadcast_to(total, support.shape))
    TP, FP, FN = tp.sum(-1), fp.sum(-1), fn.sum(-1)
    micro = {"precision": _safe_div(TP, TP + FP), "recall": _safe_div(TP, TP + FN),
             "f1": _safe_div(2 * TP, 2 * TP + FP + FN)}
    for name in ("precision", "recall", "f1"):
        out[f"{name}_macro"] = out[name].mean(axis=-1)
        out[f"{name}_micro"] = micro[name]
        out[f"{name}_weighted"] = (out[name] * weights).sum(axis=-1)
    out["accuracy"] = _safe_div(TP, cm.sum(axis=(-2, -1)))
    return out


def f1_score(gold, pred, labels: Sequence | None = None, average: str = "macro") -> float:
    """The F1 part of :func:`precision_recall_f1` as a single float (``average`` must not be None)."""
    if average is None:
        raise ValueError("f1_score returns one number; use precision_recall_f1(average=None) per class")
    return precision_recall_f1(gold, pred, labels=labels, average=average)[2]
