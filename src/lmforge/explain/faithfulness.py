"""How faithful an attribution is: remove or keep the tokens it ranks highest and watch the target's probability.

For k tokens of the context ranked by attribution (highest first, ties by position):
- deletion curve: p(target | context without its top k), falling fast for a faithful map;
- insertion curve: p(target | its top k alone, in their order), rising fast;
each against the same curves of seeded random orders (their mean). Tokens are removed from the sequence, not
masked, as ferret does (``remove_tokens``), the suffix kept; an empty context reads the start token.

AOPC as ferret defines them (``AOPC_Comprehensiveness_Evaluation`` / ``AOPC_Sufficiency_Evaluation``, DeYoung
et al. 2020): the mean over the thresholds k of p(x) - p(x without top k) (comprehensiveness, higher is better)
and of p(x) - p(top k alone) (sufficiency, lower is better). ferret's thresholds are k = 1..n; beyond ``points``
context tokens, ``points`` evenly spaced values of k (the n-th always among them) keep it to a bounded number of
forwards on long contexts. The same curves and AOPC in log-probability are kept beside (``log_prob``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lmforge.explain.targets import Target, log_probs_of_contexts
from lmforge.model.decoder import Decoder


@dataclasses.dataclass
class Faithfulness:
    thresholds: list[int]  # k
    full: float  # p(target | the whole context)
    deletion: list[float]  # p without the top k, per threshold
    insertion: list[float]  # p with the top k alone
    random_deletion: list[float]  # the mean over random orders
    random_insertion: list[float]
    comprehensiveness: float  # AOPC, ferret's (in probability)
    sufficiency: float
    random_comprehensiveness: float
    random_sufficiency: float
    log_prob: dict  # the same in log-probability: the curves and AOPC (a language model's targets are rare tokens,
    # whose probabilities differ in the third decimal while their log-probabilities differ by units)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def thresholds(n: int, points: int | None) -> list[int]:
    """k = 1..n, or ``points`` evenly spaced values of k up to n when n is larger."""
    if points is None or n <= points:
        return list(range(1, n + 1))
    return sorted({max(1, math.ceil(n * i / points)) for i in range(1, points + 1)})


def ranking(scores: list[float]) -> list[int]:
    """Context positions, highest score first (ties: the earlier position first)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def curves(model: Decoder, target: Target, order: list[int], ks: list[int], start: int, batch_size: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion log-probabilities at each k of ``ks`` for the ranking ``order``."""
    ctx = target.context
    deleted, inserted = [], []
    for k in ks:
        top = set(order[:k])
        deleted.append([t for i, t in enumerate(ctx) if i not in top])
        inserted.append([t for i, t in enumerate(ctx) if i in top])
    logp = np.array(log_probs_of_contexts(model, deleted + inserted, target, start, batch_size))
    return logp[:len(ks)], logp[len(ks):]


def faithfulness(model: Decoder, target: Target, scores: list[float], *, start: int, points: int | None = 20,
                 random_orders: int = 3, seed: int = 0, batch_size: int = 8) -> Faithfulness:
    n = len(target.context)
    ks = thresholds(n, points)
    full = log_probs_of_contexts(model, [list(target.context)], target, start, 1)[0]
    deletion, insertion = curves(model, target, ranking(scores), ks, start, batch_size)
    rng = np.random.default_rng(seed)
    random = [curves(model, target, rng.permutation(n).tolist(), ks, start, batch_size) for _ in range(random_orders)]
    mean = (lambda i, f: np.mean([f(r[i]) for r in random], axis=0)) if random else (lambda i, f: np.array([]))

    def aopc(curve: np.ndarray, reference: float) -> float:
        return float(np.mean(reference - curve)) if len(curve) else float("nan")

    p_del, p_ins = mean(0, np.exp), mean(1, np.exp)  # the random orders' mean probability (not exp of the mean)
    l_del, l_ins = mean(0, lambda c: c), mean(1, lambda c: c)
    logs = {"full": full, "deletion": deletion.tolist(), "insertion": insertion.tolist(),
            "random_deletion": l_del.tolist(), "random_insertion": l_ins.tolist(),
            "comprehensiveness": aopc(deletion, full), "sufficiency": aopc(insertion, full),
            "random_comprehensiveness": aopc(l_del, full), "random_sufficiency": aopc(l_ins, full)}
    p = math.exp(full)
    return Faithfulness(ks, p, np.exp(deletion).tolist(), np.exp(insertion).tolist(), p_del.tolist(), p_ins.tolist(),
                        aopc(np.exp(deletion), p), aopc(np.exp(insertion), p), aopc(p_del, p), aopc(p_ins, p), logs)
