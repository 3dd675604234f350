"""Gradient norms and losses across shards and stages: what the training loop reads from parallel models."""

from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor


def clip_grad_norm_(parameters, max_norm: float, norm_of=None, group=None) -> float:
    """torch's clip_grad_norm_, with the norm taken over all shards (a DTensor norm made whole first); with
    ``group`` (pipeline stages), summed over its processes, each counting the parameters ``norm_of``."""
    parameters = list(parameters)
    grads = [p.grad for p in (parameters if norm_of is None else norm_of) if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros((), device=parameters[0].device)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if group is not None:
        squared = total.double().square()
        torch.distributed.all_reduce(squared, group=group)
        total = squared.sqrt().to(total.dtype)
    if math.isfinite(max_norm):  # no clipping (train.grad_clip: null): the norm alone, for the finite check
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return float(total)


def scalar(t: torch.Tensor) -> float:
    """A loss as a Python float (a replicated DTensor under tensor parallelism)."""
    t = t.detach()
    return float(t.full_tensor() if isinstance(t, DTensor) else t)
