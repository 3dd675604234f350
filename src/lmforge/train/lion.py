"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), hand-written because torch.optim
has no Lion: the update is the sign of an interpolation of momentum and gradient, so every coordinate moves
by exactly ``lr``; one state tensor (the momentum) per parameter.

    c = beta1 * m + (1 - beta1) * g
    p = p * (1 - lr * weight_decay) - lr * sign(c)
    m = beta2 * m + (1 - beta2) * g
"""

from __future__ import annotations

import torch


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"Lion: lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momentum = state["exp_avg"]
                if decay:
                    p.mul_(1.0 - lr * decay)
                p.add_(momentum.lerp(p.grad, 1.0 - beta1).sign_(), alpha=-lr)  # one temporary the size of p
                momentum.lerp_(p.grad, 1.0 - beta2)
        return loss
