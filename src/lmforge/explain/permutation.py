"""Permutation importance (Breiman 2001) of the parts of labelled inputs: each feature (a segment of the texts: the
i-th line or sentence; or a column of a table) shuffled across the examples, ``repeats`` times, and the drop in the
model's accuracy recorded.

The shuffles are scikit-learn's (``sklearn.inspection.permutation_importance``): one seed drawn from
``RandomState(seed)``, each feature's repeats from a fresh ``RandomState`` of that seed, shuffling one index array
in place and permuting the already permuted column again; so the same seed gives the same numbers as scikit-learn
on an estimator that wraps the model. Written here because scikit-learn is a reference for tests, not a
dependency of lmforge, and the segments are text, not a numeric matrix.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclasses.dataclass
class PermutationImportance:
    features: list[str]  # e.g. "line 1"
    baseline: float  # the score of the unpermuted inputs
    importances: list[list[float]]  # (features, repeats): baseline - permuted score
    mean: list[float]
    std: list[float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def permutation_importance(score: Callable[[np.ndarray, np.ndarray], float], X: np.ndarray, y: np.ndarray,
                           repeats: int, seed: int, names: list[str] | None = None) -> PermutationImportance:
    """``score(X, y)`` (higher is better) against each column of ``X`` (n, m) shuffled ``repeats`` times."""
    seed_of_columns = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    baseline = float(score(X, y))
    rows = []
    for j in range(X.shape[1]):
        rng = np.random.RandomState(seed_of_columns)
        permuted, order = X.copy(), np.arange(X.shape[0])
        scores = []
        for _ in range(repeats):
            rng.shuffle(order)
            permuted[:, j] = permuted[order, j]
            scores.append(float(score(permuted, y)))
        rows.append(baseline - np.array(scores))
    importances = np.array(rows).reshape(X.shape[1], repeats)
    return PermutationImportance(names or [f"feature {j}" for j in range(X.shape[1])], baseline,
                                 importances.tolist(), importances.mean(axis=1).tolist(),
                                 importances.std(axis=1).tolist())


def split_segments(text: str, unit: str) -> list[str]:
    """``text`` as consecutive segments that join back to it: ``lines`` (each with its newline) or
    ``sentences`` (each with the space after it)."""
    if unit == "lines":
        return text.splitlines(keepends=True)
    if unit == "sentences":
        parts, start = [], 0
        for m in SENTENCE_END.finditer(text):
            parts.append(text[start:m.end()])
            start = m.end()
        return parts + ([text[start:]] if start < len(text) else [])
    raise ValueError(f"unknown segment unit {unit!r}: lines or sentences")


def segment_matrix(texts: list[str], unit: str) -> np.ndarray:
    """(n, m) object array: text i's segment j, "" where a text has fewer than the longest's m segments."""
    split = [split_segments(t, unit) for t in texts]
    width = max(len(s) for s in split)
    X = np.full((len(texts), width), "", dtype=object)
    for i, s in enumerate(split):
        X[i, :len(s)] = s
    return X


def joined(X: np.ndarray) -> list[str]:
    """The texts of a segment matrix's rows."""
    return ["".join(row) for row in X]
