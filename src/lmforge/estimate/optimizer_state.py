"""Optimizer state and step working memory, per optimizer kind, from the model's real parameter shapes.

The shapes come from the decoder built on the ``meta`` device (no memory, no compute), and the split into
groups from the same predicates the optimizers use (``model/parameter_kinds.py``), so tied embeddings, norms and
Muon's matrices are counted exactly as training will hold them. All state is fp32.
"""

from __future__ import annotations

import functools
import math

import torch

from lmforge.estimate.activations import FP32
from lmforge.model.config import ModelDims
from lmforge.model.decoder import Decoder
from lmforge.model.parameter_kinds import is_decayed, is_hidden_matrix


# what each kind keeps per parameter (n elements; rows x cols for a matrix), in fp32 numbers
STATE_DESCRIPTION = {
    "adamw": "2 per weight (first and second moment)",
    "adam": "2 per weight (first and second moment)",
    "rmsprop": "1 per weight (squared-gradient average; 2 with momentum)",
    "sgd": "1 per weight (momentum buffer; none without momentum)",
    "lion": "1 per weight (momentum)",
    "adafactor": "rows + columns per matrix (factored second moment), 1 per vector weight",
    "muon": "1 per block matrix (momentum) + 2 per other weight (AdamW)",
}


@functools.lru_cache(maxsize=32)
def parameter_shapes(dims: ModelDims) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every trainable parameter, tied ones once, as the decoder declares them."""
    with torch.device("meta"):
        model = Decoder(dims)
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())



def _state_numbers(kind: str, name: str, shape: tuple[int, ...], momentum: float) -> int:
    """fp32 numbers of state for one parameter (the 0-d ``step`` tensors included)."""
    n, matrix = math.prod(shape), len(shape) >= 2
    probe = torch.empty(shape, device="meta")
    if kind in ("adamw", "adam"):
        return 2 * n + 1
    if kind == "rmsprop":
        return n * (2 if momentum > 0 else 1) + 1
    if kind == "sgd":
        return n if momentum > 0 else 0
    if kind == "lion":
        return n
    if kind == "adafactor":
        return (shape[-2] + shape[-1] + 1) if matrix else n + 1
    if kind == "muon":
        return n if is_hidden_matrix(name, probe) else 2 * n + 1
    raise ValueError(f"unknown optimizer {kind!r}")


def optimizer_state_bytes(dims: ModelDims, kind: str, momentum: float = 0.9, shard: int = 1) -> int:
    """Bytes of optimizer state for the whole model, divided over ``shard`` ranks (FSDP)."""
    total = sum(_state_numbers(kind, name, shape, momentum) for name, shape in parameter_shapes(dims))
    return total * FP32 // shard


# Working memory of one optimizer step, in multiples of the largest parameter (per-tensor loops: CPU and
# Muon) or of the largest parameter group (foreach kernels over a whole group: CUDA's default).
_PER_TENSOR_TEMPORARIES = {"adamw": 2, "adam": 2, "rmsprop": 2, "sgd": 2, "lion": 1, "adafactor": 2, "muon": 2}
_FOREACH_TEMPORARIES = {"adamw": 1, "adam": 2, "rmsprop": 2, "sgd": 1, "lion": 1, "adafactor": 2, "muon": 2}


def optimizer_step_working_bytes(dims: ModelDims, kind: str, device: str, shard: int = 1) -> int:
    shapes = parameter_shapes(dims)
    if kind == "muon":
        largest_matrix = max(math.prod(s) for n, s in shapes if is_hidden_matrix(n, torch.empty(s, device="meta")))
        rest = [math.prod(s) for n, s in shapes if not is_hidden_matrix(n, torch.empty(s, device="meta"))]
        per_tensor = max(2.5 * largest_matrix, 2 * max(rest))  # fp32 update + bf16 Newton-Schulz iterates
        return int(per_tensor * FP32) // shard
    if device == "cuda":
        groups = [0, 0]
        for name, shape in shapes:
            groups[0 if is_decayed(name, torch.empty(shape, device="meta")) else 1] += math.prod(shape)
        return _FOREACH_TEMPORARIES[kind] * max(groups) * FP32 // shard
    return _PER_TENSOR_TEMPORARIES[kind] * max(math.prod(s) for _, s in shapes) * FP32 // shard
