"""The decoder's fused projections seen two ways: tensor-parallel blocks, and a canonical layout.

``attn.qkv_proj`` holds the rows ``[q (H*D); k (K*D); v (K*D)]`` and ``mlp.gate_up_proj`` the rows
``[gate (F); up (F)]``. Tensor parallelism shards rows (``Shard(0)``), so before a model is distributed
over ``tp`` processes each fused weight's rows are permuted into ``tp`` blocks
``[q_0; k_0; v_0 | q_1; k_1; v_1 | ...]``: process ``t`` then holds its own heads' q, k and v (its own
columns of gate and up), and the fused kernels run unchanged on ``H/tp`` heads.

The global order of such a DTensor depends on ``tp``. Checkpoints and exports therefore never see the
fused tensors: they see canonical entries, ``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj``
(Hugging Face Llama's names), made as views into the fused tensor's local storage (DTensor.from_local
over a slice of the local shard). Their global layout is the same for every degree of parallelism, so a
checkpoint saved with one layout loads into any other, and loading writes straight into the fused
parameter (and optimizer state). FSDP2 shards fused weights on dim 1, so whole rows stay on one process.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, Shard

from lmforge.model.config import ModelDims

FUSED = ("attn.qkv_proj.weight", "mlp.gate_up_proj.weight")
WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


def clean_name(name: str) -> str:
    """A parameter name without the parts wrappers add (activation checkpointing, compile; DDP's ``module.``)."""
    parts = [part for part in name.split(".") if part not in WRAPPER_PARTS]
    return ".".join(parts[1:] if parts[0] == "module" else parts)


def fused_parts(dims: ModelDims) -> dict[str, list[tuple[str, int]]]:
    """For each fused weight (name suffix): its canonical parts (name suffix, rows) in row order."""
    H, K, D, F = dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.ffn_hidden
    return {
        "attn.qkv_proj.weight": [("attn.q_proj.weight", H * D), ("attn.k_proj.weight", K * D),
                                 ("attn.v_proj.weight", K * D)],
        "mlp.gate_up_proj.weight": [("mlp.gate_proj.weight", F), ("mlp.up_proj.weight", F)],
    }


def parts_of(name: str, dims: ModelDims) -> list[tuple[str, int]] | None:
    """Canonical parts (full names) of the fused weight called ``name``, or None if it is not fused."""
    for suffix, parts in fused_parts(dims).items():
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return [(stem + part, rows) for part, rows in parts]
    return None


def tp_row_order(rows: list[int], tp: int) -> torch.Tensor:
    """Index ``idx`` such that ``fused[idx]`` is the tensor-parallel order: for each of the ``tp`` blocks,
    that block's slice of every part."""
    starts = [sum(rows[:i]) for i in range(len(rows))]
    order = []
    for t in range(tp):
        for start, n in zip(starts, rows):
            chunk = n // tp
            order.extend(range(start + t * chunk, start + (t + 1) * chunk))
    return torch.tensor(order, dtype=torch.long)


@torch.no_grad()
def permute_for_tp(model: torch.nn.Module, dims: ModelDims, tp: int) -> None:
    """Reorder the rows of every fused weight (plain tensors, before distribution) into tp blocks."""
    for name, p in model.named_parameters():
        parts = parts_of(clean_name(name), dims)
        if parts is not None:
            p.copy_(p[tp_row_order([n for _, n in parts], tp)])


def _tp_degree(t: DTensor) -> int:
    names = t.device_mesh.mesh_dim_names or ()
    if "tp" in names:
        i = names.index("tp")
        if isinstance(t.placements[i], Shard) and t.placements[i].dim == 0:
            return t.device_mesh.size(i)
    return 1


@torch.no_grad()
def split_fused(tensor: torch.Tensor, parts: list[tuple[str, int]]) -> list[tuple[str, torch.Tensor]]:
    """Canonical views of a fused tensor (a parameter or optimizer state of its shape), plain or DTensor."""
    if not isinstance(tensor, DTensor):
        views, start = [], 0
        for name, rows in parts:
            views.append((name, tensor[start:start + rows]))
            start += rows
        return views
    tp = _tp_degree(tensor)
    names = tensor.device_mesh.mesh_dim_names or ()
    for i, placement in enumerate(tensor.placements):
        if isinstance(placement, Shard) and placement.dim == 0 and (i >= len(names) or names[i] != "tp"):
            raise ValueError(f"fused weight sharded on its rows outside tensor parallelism: {tensor.placements}")
    local = tensor._local_tensor
    total = sum(rows for _, rows in parts)
    if local.shape[0] * tp != total:
        raise ValueError(f"fused weight: {local.shape[0]} local rows x tp {tp} != {total}")
    views, start = [], 0
    for name, rows in parts:
        n = rows // tp
        shape = (rows, *tensor.shape[1:])
        stride = torch.empty(shape, device="meta").stride()  # the whole tensor's, contiguous
        views.append((name, DTensor.from_local(local[start:start + n], tensor.device_mesh, tensor.placements,
                                               run_check=False, shape=torch.Size(shape), stride=stride)))
        start += n
    return views


def canonical_entries(name: str, tensor: torch.Tensor, dims: ModelDims) -> list[tuple[str, torch.Tensor]]:
    """``[(canonical name, view)]`` for the parameter ``name`` (or a state tensor of its shape)."""
    name = clean_name(name)
    parts = parts_of(name, dims)
    if parts is None or tensor.dim() != 2:
        return [(name, tensor)]
    return split_fused(tensor, parts)


def model_views(model: torch.nn.Module, dims: ModelDims) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` (tied ones once) under its canonical name: views that share storage."""
    views = {}
    for name, p in model.named_parameters():
        views.update(canonical_entries(name, p.detach() if not isinstance(p, DTensor) else p, dims))
    return views


def to_canonical(full: dict[str, torch.Tensor], dims: ModelDims) -> dict[str, torch.Tensor]:
    """A full (unsharded) state dict with fused keys -> canonical keys (views, no copies)."""
    out = {}
    for name, tensor in full.items():
        out.update(canonical_entries(name, tensor, dims))
    return out
