"""The merge methods, each a function of one tensor's values across the models (float32 in, float32 out).

- linear: the weighted mean (weights normalized to sum to 1); a uniform soup.
- task arithmetic (Ilharco et al. 2023): ``base + scale * sum_i w_i * (theta_i - base)``.
- TIES (Yadav et al. 2023): trim each delta to its ``density`` share of largest magnitudes, elect each entry's
  sign by the sum of the trimmed deltas, average the deltas that agree with it (disjoint mean), add
  ``scale`` times that to the base.
- DARE (Yu et al. 2024): drop each delta entry with probability ``p = 1 - density`` and rescale the rest by
  ``1 / (1 - p)``; then task arithmetic (dare_linear) or TIES' sign election and disjoint mean (dare_ties).
- SLERP: spherical interpolation of two flattened tensors by ``t`` (linear when they are nearly parallel).

When every model holds the same tensor it is the result, bit for bit: each formula gives it mathematically,
and this makes it exact whatever the rounding of the arithmetic.
"""

from __future__ import annotations

import math

import torch

PARALLEL = 1 - 1e-6  # cosine above which SLERP interpolates linearly (the angle is lost in rounding)


def same(tensors: list[torch.Tensor]) -> bool:
    return all(torch.equal(tensors[0], t) for t in tensors[1:])


def linear(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = sum(weights)
    out = torch.zeros_like(tensors[0])
    for tensor, w in zip(tensors, weights):
        out.add_(tensor, alpha=w / total)
    return out


def task_arithmetic(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float], scale: float) -> torch.Tensor:
    delta = torch.zeros_like(base)
    for tensor, w in zip(tensors, weights):
        delta.add_(tensor - base, alpha=w)
    return base + scale * delta


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its ``density`` share of largest-magnitude entries set to zero (ties keep the
    first in ``torch.topk``'s order)."""
    k = max(1, math.ceil(density * delta.numel())) if density < 1 else delta.numel()
    if k >= delta.numel():
        return delta.clone()
    flat = delta.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(delta)


def disjoint_mean(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Sign election by the sum of the (weighted) deltas, then the mean of the entries that agree with it."""
    stacked = torch.stack([d * w for d, w in zip(deltas, weights)])  # (N, ...)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(0)
    total = torch.where(agree, stacked, torch.zeros_like(stacked)).sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def ties(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float], scale: float,
         density: float) -> torch.Tensor:
    return base + scale * disjoint_mean([trim(t - base, density) for t in tensors], weights)


def dare(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Each entry kept with probability ``density`` (dropped with p = 1 - density), the kept ones / density."""
    if density >= 1:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def dare_linear(base, tensors, weights, scale, density, generators) -> torch.Tensor:
    deltas = [dare(t - base, density, g) for t, g in zip(tensors, generators)]
    return base + scale * sum(d * w for d, w in zip(deltas, weights))


def dare_ties(base, tensors, weights, scale, density, generators) -> torch.Tensor:
    deltas = [dare(t - base, density, g) for t, g in zip(tensors, generators)]
    return base + scale * disjoint_mean(deltas, weights)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the great circle between the directions of ``a`` and ``b`` (their
    norms interpolated with it, as mergekit does: the formula applied to the unnormalized vectors)."""
    fa, fb = a.flatten().double(), b.flatten().double()
    na, nb = fa.norm(), fb.norm()
    if na == 0 or nb == 0:
        return ((1 - t) * fa + t * fb).to(a.dtype).view_as(a)
    cos = torch.clamp(torch.dot(fa / na, fb / nb), -1.0, 1.0)
    if abs(cos.item()) > PARALLEL:
        return ((1 - t) * fa + t * fb).to(a.dtype).view_as(a)
    omega = torch.arccos(cos)
    s = torch.sin(omega)
    return ((torch.sin((1 - t) * omega) / s) * fa + (torch.sin(t * omega) / s) * fb).to(a.dtype).view_as(a)
