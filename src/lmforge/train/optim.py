"""Optimizer construction with parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.train.config import TrainConfig


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies to matrices only: never to norms, biases or embeddings."""
    return param.ndim >= 2 and "norm" not in name and "embed" not in name


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if is_decayed(name, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )
