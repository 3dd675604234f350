"""The merge methods, each a function of one tensor's values across the models (float32 in, float32 out).

- linear: the weighted mean (weights normalized to sum to 1); a uniform soup.
- task arithmetic (Ilharco et al. 2023): ``base + scale * sum_i w_i * (theta_i - base)``.
- TIES (Yadav et al. 2023): trim each delta to its ``density`` share of largest magnitudes, elect each entry's
  sign by the sum of the trimmed deltas, average the deltas that agree with it (disjoint mean), add
  ``scale`` times that to the base. In place and in chunks: about one tensor per input, the base and the output.
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


CHUNK = 1 << 20  # elements per step of the element-wise passes: their temporaries stay this small


def kth_largest_magnitude_bits(delta: torch.Tensor, k: int) -> int:
    """The float32 bit pattern of the ``k``-th largest |entry| of ``delta``, exactly, with no copy of the tensor:
    non-negative floats order as their bit patterns, so a binary search over those (31 passes, each counting in
    chunks) finds it. (A sort, kthvalue or topk would copy the whole tensor, and TIES holds several.)"""
    flat = delta.reshape(-1)
    lo, hi = 0, 0x7F800000  # +0.0 .. +inf
    while lo < hi:
        mid = (lo + hi + 1) // 2
        count = sum(int((flat[i:i + CHUNK].abs().view(torch.int32) >= mid).sum()) for i in range(0, flat.numel(), CHUNK))
        lo, hi = (mid, hi) if count >= k else (lo, mid - 1)
    return lo


def trim_(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with every entry below its ``density`` share of largest magnitudes set to zero, in place (the
    entries at the threshold magnitude are all kept)."""
    n = delta.numel()
    k = max(1, math.ceil(density * n))
    if k >= n:
        return delta
    bits = kth_largest_magnitude_bits(delta, k)
    flat = delta.reshape(-1)
    for i in range(0, n, CHUNK):
        part = flat[i:i + CHUNK]
        part.masked_fill_(part.abs().view(torch.int32) < bits, 0.0)
    return delta


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    return trim_(delta.clone(), density)


def disjoint_mean_(deltas: list[torch.Tensor], weights: list[float], out: torch.Tensor) -> torch.Tensor:
    """Into ``out``: sign election by the sum of the (weighted) deltas, then the mean of the entries that agree
    with it; chunk by chunk, so the temporaries are chunk-sized (``deltas`` are weighted in place)."""
    for d, w in zip(deltas, weights):
        if w != 1:
            d.mul_(w)
    flats, result = [d.reshape(-1) for d in deltas], out.reshape(-1)
    for i in range(0, result.numel(), CHUNK):
        parts = [f[i:i + CHUNK] for f in flats]
        sign = torch.sign(sum(parts))
        total, count = torch.zeros_like(sign), torch.zeros_like(sign)
        for part in parts:
            agree = (torch.sign(part) == sign) & (part != 0)
            total += torch.where(agree, part, 0.0)
            count += agree
        result[i:i + CHUNK] = torch.where(count > 0, total / count.clamp(min=1), 0.0)
    return out


def disjoint_mean(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    return disjoint_mean_([d.clone() for d in deltas], weights, torch.empty_like(deltas[0]))


def ties(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float], scale: float,
         density: float, inplace: bool = False) -> torch.Tensor:
    """TIES; with ``inplace`` the input tensors become their trimmed deltas (the stage's, read for this merge
    alone: no copy of them is made)."""
    deltas = [trim_((t if inplace else t.clone()).sub_(base), density) for t in tensors]
    out = disjoint_mean_(deltas, weights, torch.empty_like(base))
    return out.mul_(scale).add_(base)


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
    return disjoint_mean_(deltas, weights, torch.empty_like(base)).mul_(scale).add_(base)


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
