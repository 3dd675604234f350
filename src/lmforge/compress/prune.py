"""Pruning masks and their application to the block linear layers (in place, float32).

- magnitude: per layer, the ``sparsity`` share of smallest |W| (exactly ``int(sparsity * numel)`` zeros);
- Wanda (Sun et al. 2024): score ``|W_ij| * ||X_j||_2`` (calibration input norms of the dense model, one pass),
  the ``int(sparsity * in_features)`` lowest-scoring weights of every output row set to zero;
- 2:4: in every group of four consecutive input weights of a row, the two lowest-scoring set to zero.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.compress.calibration import block_linears


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask with exactly ``int(sparsity * numel)`` of the smallest-magnitude entries dropped."""
    k = int(sparsity * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[weight.abs().flatten().argsort(stable=True)[:k]] = False
    return keep.view_as(weight)


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask with exactly ``int(sparsity * in_features)`` lowest scores of every row dropped."""
    k = int(sparsity * score.shape[1])
    keep = torch.ones_like(score, dtype=torch.bool)
    keep.scatter_(1, score.argsort(dim=1, stable=True)[:, :k], False)
    return keep


def two_four_mask(score: torch.Tensor) -> torch.Tensor:
    """Keep-mask with the two lowest scores of every group of four consecutive inputs dropped."""
    out, inp = score.shape
    groups = score.reshape(out, inp // 4, 4)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.argsort(dim=2, stable=True)[..., :2], False)
    return keep.reshape(out, inp)


def wanda_score(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    return weight.abs() * input_sq_norms.sqrt().to(weight.dtype)[None, :]


@torch.no_grad()
def prune(model: nn.Module, variant, norms: dict[str, torch.Tensor] | None) -> None:
    """Zero the weights ``variant`` (magnitude, wanda, two_four) drops, in every block linear layer."""
    for name, layer in block_linears(model).items():
        w = layer.weight
        if variant.method == "magnitude":
            keep = magnitude_mask(w, variant.sparsity)
        elif variant.method == "wanda":
            keep = row_mask(wanda_score(w, norms[name]), variant.sparsity)
        else:
            score = wanda_score(w, norms[name]) if variant.score == "wanda" else w.abs()
            keep = two_four_mask(score)
        w.mul_(keep)


def pruned_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: keep-mask} of every block linear weight (its nonzero entries)."""
    return {f"{name}.weight": layer.weight.detach() != 0 for name, layer in block_linears(model).items()}


def holding_zeros(keep: dict[str, torch.Tensor], loss_fn):
    """The training loop's ``adapt`` and ``loss_fn`` for recovery training of a pruned model: the pruned weights
    get no gradient (so AdamW, Adam, SGD and Lion leave them at exactly zero) and are zeroed again before every
    step's forward (for optimizers whose update mixes entries, such as Muon's orthogonalization)."""
    held: list[tuple[torch.Tensor, torch.Tensor]] = []

    def adapt(model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in keep:
                mask = keep[name].to(p.device, p.dtype)
                p.register_hook(lambda grad, mask=mask: grad * mask)
                held.append((p, mask))

    def loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for p, mask in held:
                p.mul_(mask)
        return loss_fn(model, batch)
    return adapt, loss


@torch.no_grad()
def apply_masks(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if name in keep:
            p.mul_(keep[name].to(p.dtype))
