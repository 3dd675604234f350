"""FGSM and PGD in embedding space (Goodfellow et al. 2015; Madry et al. 2018), per token position.

Each attacked position's perturbation lies in its own ball: L2, ``||delta_i||_2 <= r_i``, or L-infinity,
``||delta_i||_inf <= r_i / sqrt(C)`` (the L2 radius spread evenly over the C coordinates), with
``r_i = epsilon * n`` and n the mean L2 norm of the embedding table's rows (or token i's own row). Fixed and
protected positions have radius 0. PGD keeps the perturbation of highest loss it met, the clean input (delta = 0)
included, so its loss is never below the clean one; FGSM is the single step, kept whatever its loss.
"""

from __future__ import annotations

import math

import torch

from lmforge.attack.config import EmbeddingAttack
from lmforge.attack.objective import Example, Outcome, embed, loss_and_gradient, losses
from lmforge.model.decoder import Decoder
from lmforge.train.adversarial import direction, project  # the same balls as adversarial training's


def radii(model: Decoder, example: Example, spec: EmbeddingAttack) -> torch.Tensor:
    """(T, 1): each position's radius in ``spec.norm`` (zero where the position is not attacked)."""
    table = model.embed_tokens.weight.detach()  # (V, C)
    ids = torch.tensor(example.ids, device=table.device)
    norms = table.norm(dim=1)  # (V,)
    base = norms.mean().expand(len(ids)) if spec.scale == "mean" else norms[ids]  # (T,)
    mask = torch.zeros(len(ids), device=table.device)
    mask[list(example.attackable)] = 1.0
    r = spec.epsilon * base * mask
    if spec.norm == "linf":
        r = r / math.sqrt(table.shape[1])
    return r.unsqueeze(-1)


def random_start(radius: torch.Tensor, C: int, norm: str, generator: torch.Generator) -> torch.Tensor:
    """(T, C): a point drawn uniformly from each position's ball."""
    T = radius.shape[0]
    if norm == "linf":
        u = torch.rand(T, C, generator=generator, dtype=torch.float64) * 2 - 1
        return u.to(radius) * radius
    g = torch.randn(T, C, generator=generator, dtype=torch.float64)
    scale = torch.rand(T, 1, generator=generator, dtype=torch.float64) ** (1.0 / C)  # uniform in volume
    return (g / g.norm(dim=-1, keepdim=True) * scale).to(radius) * radius


def fgsm(model: Decoder, example: Example, spec: EmbeddingAttack) -> Outcome:
    """One step of the full radius along the loss gradient's ascent direction, from the clean input."""
    x = embed(model, torch.tensor([example.ids], device=model.rope_cos.device)).detach()  # (1, T, C)
    radius = radii(model, example, spec)
    _, _, grad = loss_and_gradient(model, example, x)
    delta = project(radius * direction(grad[0], spec.norm), radius, spec.norm)  # (T, C)
    with torch.no_grad():
        loss = float(losses(model, example, x + delta)[0])
    return Outcome(loss, list(example.ids), delta, _perturbed(delta), queries=2)


def pgd(model: Decoder, example: Example, spec: EmbeddingAttack, clean_loss: float, seed: int) -> Outcome:
    """``spec.steps`` projected ascent steps (from a seeded random point of the ball, or the clean input); the
    perturbation of highest loss met, the clean input's included."""
    x = embed(model, torch.tensor([example.ids], device=model.rope_cos.device)).detach()  # (1, T, C)
    radius = radii(model, example, spec)
    step = radius * ((spec.step_size or 2.5 * spec.epsilon / spec.steps) / spec.epsilon)  # (T, 1)
    delta = torch.zeros_like(x[0])
    if spec.random_start:
        delta = random_start(radius, x.shape[-1], spec.norm, torch.Generator().manual_seed(seed))
    best_loss, best = clean_loss, torch.zeros_like(delta)
    for _ in range(spec.steps):
        loss, _, grad = loss_and_gradient(model, example, x + delta)
        if loss > best_loss:
            best_loss, best = loss, delta
        delta = project(delta + step * direction(grad[0], spec.norm), radius, spec.norm)
    with torch.no_grad():
        loss = float(losses(model, example, x + delta)[0])
    if loss > best_loss:
        best_loss, best = loss, delta
    return Outcome(best_loss, list(example.ids), best, _perturbed(best), queries=spec.steps + 1)


def _perturbed(delta: torch.Tensor) -> list[int]:
    return [int(i) for i in (delta.abs().amax(-1) > 0).nonzero().flatten()]
