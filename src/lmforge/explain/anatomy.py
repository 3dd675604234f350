"""Model anatomy: parameters per module, and for every weight matrix its norms, singular values and the power-law
exponent of its eigenvalue spectrum (the empirical spectral density of W^T W), as WeightWatcher computes it:
alpha < 2 reads as over-trained, alpha > 6 as under-trained (WeightWatcher's rule of thumb).

The fit is Clauset, Shalizi & Newman's (2009), which WeightWatcher takes from the ``powerlaw`` package: for every
candidate lower bound xmin (each eigenvalue), the continuous maximum-likelihood exponent of the tail above it,
alpha = 1 + n / sum(ln(x_i / xmin)), and the xmin whose fit is closest to the tail's empirical distribution
(Kolmogorov-Smirnov distance). Written here (a few vectorised lines) instead of depending on ``powerlaw`` and
``weightwatcher``, whose other dependencies lmforge does not need."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

OVER_TRAINED, UNDER_TRAINED = 2.0, 6.0
MIN_EIGENVALUES = 10  # fewer: no fit (alpha None)


@dataclasses.dataclass
class PowerLawFit:
    alpha: float
    xmin: float
    ks_distance: float
    tail: int  # eigenvalues at or above xmin


def power_law_fit(eigenvalues: np.ndarray) -> PowerLawFit | None:
    """The power-law fit of the tail of ``eigenvalues`` (positive ones), or None if there are too few."""
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[x > 0]
    n = len(x)
    if n < MIN_EIGENVALUES:
        return None
    logs = np.log(x)
    best = None
    for i in range(n - 1):  # xmin = x[i]; the tail x[i:] has n - i values
        m = n - i
        total = logs[i:].sum() - m * logs[i]
        if total <= 0:
            continue
        alpha = 1.0 + m / total
        fitted = 1.0 - np.exp((1.0 - alpha) * (logs[i:] - logs[i]))  # the fit's CDF at the tail's values
        empirical = np.arange(m) / m
        distance = float(np.abs(fitted - empirical).max())
        if best is None or distance < best.ks_distance:
            best = PowerLawFit(alpha, float(x[i]), distance, m)
    return best


@dataclasses.dataclass
class MatrixFacts:
    name: str
    shape: tuple[int, int]
    parameters: int
    frobenius_norm: float
    spectral_norm: float
    stable_rank: float  # ||W||_F^2 / ||W||_2^2
    singular_values: list[float]
    alpha: float | None
    xmin: float | None
    ks_distance: float | None
    verdict: str  # "over-trained" (alpha < 2), "under-trained" (alpha > 6), "ok", or "no fit"

    def to_dict(self, with_spectrum: bool = True) -> dict:
        d = dataclasses.asdict(self)
        if not with_spectrum:
            del d["singular_values"]
        return d


def verdict_of(alpha: float | None) -> str:
    if alpha is None:
        return "no fit"
    return "over-trained" if alpha < OVER_TRAINED else "under-trained" if alpha > UNDER_TRAINED else "ok"


@torch.no_grad()
def matrix_facts(name: str, weight: torch.Tensor) -> MatrixFacts:
    w = weight.detach().double().cpu()
    sv = torch.linalg.svdvals(w)  # descending
    fit = power_law_fit((sv ** 2).numpy())
    frobenius, spectral = float(w.norm()), float(sv[0])
    return MatrixFacts(name, tuple(w.shape), w.numel(), frobenius, spectral,
                       frobenius ** 2 / spectral ** 2 if spectral > 0 else 0.0, sv.tolist(),
                       None if fit is None else fit.alpha, None if fit is None else fit.xmin,
                       None if fit is None else fit.ks_distance, verdict_of(None if fit is None else fit.alpha))


def weight_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every 2-D weight (the blocks' projections, the token table, an untied LM head), shared ones once."""
    return {name: p for name, p in model.named_parameters() if p.dim() == 2}


def parameters_per_module(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level part (``embed_tokens``, ``layers.<i>.attn``, ``layers.<i>.mlp``, the norms,
    ``lm_head`` when untied), shared tensors counted once."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:3] if parts[0] == "layers" else parts[:1])
        counts[key] = counts.get(key, 0) + p.numel()
    return counts


def anatomy(model: nn.Module) -> dict:
    """{"parameters": per module, "matrices": [MatrixFacts], "flagged": names outside 2 <= alpha <= 6}."""
    facts = [matrix_facts(name, w) for name, w in weight_matrices(model).items()]
    return {"parameters": parameters_per_module(model), "matrices": facts,
            "flagged": [f.name for f in facts if f.verdict in ("over-trained", "under-trained")]}
