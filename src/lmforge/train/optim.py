"""Optimizer construction with parameter groups: ``train.optimizer`` picks one of seven.

AdamW, Adam, RMSprop, SGD, Adafactor and Muon are torch.optim's own (Muon with an fp32 Newton-Schulz step
on CPU, ``muon.py``); Lion is hand-written (``lion.py``).
Weight decay applies to matrices only, never to norms, biases or embeddings. Muon orthogonalizes the
updates of the 2-D weights inside the blocks only; embeddings, the LM head and norms get AdamW, and the
two step as one ``OptimizerChain``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lmforge.model.parameter_kinds import is_decayed, is_hidden_matrix
from lmforge.train.config import TrainConfig
from lmforge.train.lion import Lion
from lmforge.train.muon import Muon


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    # named_parameters() yields a shared (tied) tensor once, under its first name
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def parameter_groups(model_or_params: nn.Module | Iterable[tuple[str, torch.Tensor]], weight_decay: float) -> list[dict]:
    named = _trainable(model_or_params) if isinstance(model_or_params, nn.Module) else list(model_or_params)
    decay = [p for name, p in named if is_decayed(name, p)]
    no_decay = [p for name, p in named if not is_decayed(name, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # a group left empty by train(trainable=...) is dropped


class OptimizerChain:
    """Several torch optimizers that step as one: one ``param_groups`` list (the schedule sets every
    group's lr), one ``state_dict`` in torch's layout with parameter ids numbered across the chain (so
    checkpoint.py flattens it like any optimizer), and ``step``/``zero_grad`` for all. A torch
    GradScaler drives it like an optimizer: it only needs ``param_groups`` and ``step``."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def step(self, closure=None):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state.update({offset + pid: entry for pid, entry in sd["state"].items()})
            groups += [dict(g, params=[offset + i for i in g["params"]]) for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, first, offset = state_dict["param_groups"], 0, 0
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state holds {len(groups)} parameter groups, this optimizer {len(self.param_groups)}")
        for opt in self.optimizers:
            mine = groups[first:first + len(opt.param_groups)]
            count = sum(len(g["params"]) for g in mine)
            opt.load_state_dict({
                "state": {int(pid) - offset: entry for pid, entry in state_dict["state"].items()
                          if offset <= int(pid) < offset + count},
                "param_groups": [dict(g, params=[i - offset for i in g["params"]]) for g in mine],
            })
            first, offset = first + len(opt.param_groups), offset + count


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer | OptimizerChain:
    name, lr = cfg.optimizer, cfg.lr
    if name == "muon":
        return _muon(model, cfg)
    groups = parameter_groups(model, cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if name == "adam":  # weight decay as an L2 term in the gradient, as torch.optim.Adam does
        return torch.optim.Adam(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.rmsprop.alpha, eps=cfg.eps, momentum=cfg.rmsprop.momentum)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.sgd.momentum,
                               nesterov=cfg.sgd.nesterov and cfg.sgd.momentum > 0)
    if name == "lion":
        return Lion(groups, lr=lr, betas=(cfg.lion.beta1, cfg.lion.beta2))
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr, beta2_decay=cfg.adafactor.beta2_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def _muon(model: nn.Module, cfg: TrainConfig) -> OptimizerChain:
    named = _trainable(model)
    matrices = [p for n, p in named if is_hidden_matrix(n, p)]
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    m = cfg.muon
    muon = Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=m.momentum,
                            nesterov=m.nesterov, ns_steps=m.ns_steps, adjust_lr_fn=m.adjust_lr)
    adamw = torch.optim.AdamW(parameter_groups(rest, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              eps=cfg.eps)
    return OptimizerChain(muon, adamw)
