"""Adversarial training in embedding space (``train.adversarial``, ``finetune.adversarial``), as a wrapper of the
loop's ``loss_fn`` plug point: the wrapped loss is taken at input embeddings moved by ``delta`` (B, T, C), which a
forward hook on the embedding table adds while it is set, so every objective (next-token, sft, classification)
and every wrapper (DDP, FSDP2, compiled blocks, activation checkpointing) runs unchanged.

- pgd (Madry et al. 2018): ``steps`` projected ascent steps on delta, each a forward and a backward toward delta
  alone (the parameters get no gradient from them; they run on the unwrapped model, so DDP's reducer never sees
  a forward without its backward); the model then trains on the loss at the last iterate.
- freelb (Zhu et al. 2020): the model trains on the mean loss over the ``steps`` ascent iterates, the gradient
  toward delta and the parameters' from the same forwards (each iterate's graph is kept until the loop's
  backward: ``steps`` times the activations).

Each position's perturbation lies in its own ball (the attack stage's, ``lmforge.attack.embedding``): L2 radius
``r = epsilon * n``, n the mean L2 norm of the embedding table's rows; L-infinity half-side ``r / sqrt(C)``.
The random start and the ascent are seeded by the loop's RNG, which checkpoints restore: resuming is exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.train.config import AdversarialSettings


def project(delta: torch.Tensor, radius: torch.Tensor | float, norm: str) -> torch.Tensor:
    """``delta`` (..., C) moved into the balls of ``radius`` (broadcast against (..., 1)), position by position."""
    if norm == "linf":
        radius = torch.as_tensor(radius, dtype=delta.dtype, device=delta.device)
        return torch.maximum(torch.minimum(delta, radius), -radius)
    length = delta.norm(dim=-1, keepdim=True)
    return delta * torch.where(length > radius, radius / length.clamp_min(1e-30), torch.ones_like(length))


def direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest ascent direction of unit size in ``norm`` per position: sign(g), or g / ||g||_2."""
    if norm == "linf":
        return grad.sign()
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def ball_radius(embedding: nn.Embedding, settings: AdversarialSettings) -> float:
    """The radius of every position's ball in ``settings.norm`` (the L-infinity half-side for linf)."""
    table = embedding.weight.detach()
    if hasattr(table, "full_tensor"):  # an FSDP2-sharded table between forwards
        table = table.full_tensor()
    r = settings.epsilon * float(table.float().norm(dim=1).mean())
    return r / math.sqrt(table.shape[1]) if settings.norm == "linf" else r


def uniform_in_ball(shape: torch.Size, radius: float, norm: str, device: torch.device) -> torch.Tensor:
    """A point drawn uniformly from each position's ball (fp32, from the global RNG of ``device``)."""
    if norm == "linf":
        return (torch.rand(shape, device=device) * 2 - 1) * radius
    g = torch.randn(shape, device=device)
    scale = torch.rand((*shape[:-1], 1), device=device) ** (1.0 / shape[-1])  # uniform in volume
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30) * scale * radius


class Perturbation:
    """Adds ``delta`` to the embedding table's output while it is set (a forward hook). The first forward after
    ``start`` makes delta, the shape of that output: a uniform point of the ball, or zeros."""

    def __init__(self, embedding: nn.Embedding, settings: AdversarialSettings):
        self.settings, self.radius = settings, ball_radius(embedding, settings)
        self.delta: torch.Tensor | None = None
        self._armed = False
        self._handle = embedding.register_forward_hook(self._add)

    def _add(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        if self._armed and self.delta is None:
            s = self.settings
            start = (uniform_in_ball(output.shape, self.radius, s.norm, output.device) if s.random_start
                     else torch.zeros(output.shape, device=output.device))
            self.delta = start.requires_grad_(True)
        return output if self.delta is None else output + self.delta.to(output.dtype)

    def start(self) -> None:
        self._armed = True

    def ascend(self, grad: torch.Tensor, step: float) -> None:
        """One projected ascent step along ``grad`` (the loss's gradient toward delta)."""
        norm = self.settings.norm
        moved = project(self.delta.detach() + step * direction(grad.float(), norm), self.radius, norm)
        self.delta = moved.requires_grad_(True)

    def remove(self) -> None:
        self._handle.remove()


def unwrapped(model: nn.Module) -> nn.Module:
    """The module DDP wraps (its forward without the reducer's bookkeeping); any other model as it is."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def step_size(settings: AdversarialSettings, radius: float) -> float:
    relative = settings.step_size or 2.5 * settings.epsilon / settings.steps
    return radius * relative / settings.epsilon


def adversarial_terms(inner, model: nn.Module, batch: torch.Tensor, settings: AdversarialSettings
                      ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(clean loss or None when ``clean_weight`` is 0, the adversarial loss, the final delta) of one batch, both
    losses with their graphs toward the parameters; ``inner(model, batch)`` is the loss being hardened."""
    core = unwrapped(model)
    perturbation = Perturbation(core.embed_tokens, settings)
    try:
        clean = inner(model, batch) if settings.clean_weight > 0 else None
        perturbation.start()
        size = step_size(settings, perturbation.radius)
        iterates = []
        for k in range(settings.steps):
            if settings.method == "freelb":  # this iterate trains the model too: its graph is kept
                iterates.append(inner(model, batch))
                if k == settings.steps - 1:
                    break  # the next iterate would not be trained on
                (grad,) = torch.autograd.grad(iterates[-1], perturbation.delta, retain_graph=True)
            else:
                (grad,) = torch.autograd.grad(inner(core, batch), perturbation.delta)
            perturbation.ascend(grad, size)
        if settings.method == "freelb":
            adversarial = torch.stack(iterates).mean()
        else:
            perturbation.delta = perturbation.delta.detach()
            adversarial = inner(model, batch)
        return clean, adversarial, perturbation.delta.detach()
    finally:
        perturbation.remove()


def adversarial_loss(inner, settings: AdversarialSettings):
    """The loop's ``loss_fn``: ``inner``'s loss, hardened as ``settings`` say."""
    def loss_fn(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        clean, adversarial, _ = adversarial_terms(inner, model, batch, settings)
        if clean is None:
            return adversarial
        return settings.clean_weight * clean + (1 - settings.clean_weight) * adversarial
    return loss_fn
