"""Which decoder parameters are which kind, by name and shape: the one rule the optimizers' parameter groups
and the memory estimator's count of optimizer state share."""

from __future__ import annotations

import torch


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies to matrices only: never to norms, biases or embeddings."""
    return param.ndim >= 2 and "norm" not in name and "embed" not in name


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """A 2-D weight inside the blocks (what Muon optimizes): not an embedding, the LM head or a norm."""
    return param.ndim == 2 and "embed" not in name and "lm_head" not in name and "norm" not in name
