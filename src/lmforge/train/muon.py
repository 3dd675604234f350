"""torch.optim.Muon, with the Newton-Schulz iteration in fp32 when the weights are on the CPU.

torch runs Newton-Schulz in bf16: right on GPUs, but CPUs without bf16 matrix units emulate bf16 matmuls,
measured 30x slower than fp32 on this project's 2-core AVX2 machine (768 x 256: 495 ms against 16 ms per
update, one thread). So on CPU this ``step`` runs torch's algorithm (``_single_tensor_muon``: momentum
as an EMA, Nesterov, decoupled weight decay, the shape-based learning-rate adjustment) with an fp32
iteration; everything else (defaults, validation, parameter groups, the ``momentum_buffer`` state) is
torch's own, and on GPUs the step is torch's unchanged.
"""

from __future__ import annotations

import math

import torch


def newton_schulz(update: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """The quintic Newton-Schulz orthogonalization of torch's Muon, in the update's own dtype."""
    a, b, c = coefficients
    wide = update.size(0) > update.size(1)
    x = update.T if wide else update
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1, rows / cols))  # "original" (Keller Jordan's), torch's default


class Muon(torch.optim.Muon):
    @torch.no_grad()
    def step(self, closure=None):
        if not any(p.device.type == "cpu" for group in self.param_groups for p in group["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
