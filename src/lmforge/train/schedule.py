"""Learning-rate schedules: linear warm-up, then cosine or linear decay to ``min_lr_ratio * lr``, or
warm-up-stable-decay (constant, then a linear decay over the last ``decay_fraction`` of the steps)."""

from __future__ import annotations

import math

from lmforge.train.config import TrainConfig


def warmup_cosine(step: int, *, lr: float, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The learning rate for optimizer update number ``step`` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, *, lr: float, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr - (lr - lr * min_lr_ratio) * progress


def warmup_stable_decay(step: int, *, lr: float, max_steps: int, warmup_steps: int, min_lr_ratio: float,
                        decay_fraction: float) -> float:
    """Constant ``lr`` after warm-up until the last ``ceil(decay_fraction * max_steps)`` steps, which decay
    linearly to ``min_lr_ratio * lr`` (reached at the last step)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_start = max(warmup_steps, max_steps - math.ceil(decay_fraction * max_steps))
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start + 1) / max(1, max_steps - decay_start))
    return lr - (lr - lr * min_lr_ratio) * progress


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The recipe's schedule at optimizer update ``step`` (0-based)."""
    kw = dict(lr=cfg.lr, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
    if cfg.schedule == "wsd":
        return warmup_stable_decay(step, decay_fraction=cfg.decay_fraction, **kw)
    return (warmup_linear if cfg.schedule == "linear" else warmup_cosine)(step, **kw)
