"""Structured pruning: whole MLP channels and whole attention heads removed, giving a smaller dense decoder that
computes exactly what the full one does with the removed parts masked. Every block keeps the same number of
channels and heads (the decoder has one ``ffn_hidden`` and one ``n_heads``).

Importance of a part is the size of what it writes into the residual stream: its input's activation norm over the
calibration tokens (the down / output projection's input norms, gathered in ``compress.calibration``) times the
norm of its columns in that projection. Heads keep grouped-query attention consistent: with groups of several
query heads, each group keeps its most important ``g'`` of them (its key/value head stays); with one query head
per key/value head (multi-head attention), whole groups go."""

from __future__ import annotations

import dataclasses

import torch

from lmforge.model.decoder import Decoder
from lmforge.model.config import ModelDims


def kept_channels(ffn_hidden: int, fraction: float) -> int:
    return max(1, ffn_hidden - round(fraction * ffn_hidden))


def kept_heads(dims: ModelDims, fraction: float) -> tuple[int, int]:
    """(query heads, key/value heads) left after removing ``fraction`` of the heads."""
    H, K = dims.n_heads, dims.n_kv_heads
    group = H // K
    if group > 1:  # query heads out of every group
        per_group = max(1, group - round(fraction * group))
        return K * per_group, K
    kv = max(1, K - round(fraction * K))  # whole groups of one query head
    return kv, kv


@torch.no_grad()
def channel_importance(model: Decoder, norms: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per block, (ffn_hidden,) importance of each MLP channel."""
    return [norms[f"layers.{i}.mlp.down_proj"].sqrt().float() * layer.mlp.down_proj.weight.norm(dim=0)
            for i, layer in enumerate(model.layers)]


@torch.no_grad()
def head_importance(model: Decoder, norms: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per block, (n_heads,) importance of each query head: the norm of its slice of the output projection's input
    over the calibration tokens times the Frobenius norm of its columns there."""
    H, D = model.dims.n_heads, model.dims.head_dim
    out = []
    for i, layer in enumerate(model.layers):
        activation = norms[f"layers.{i}.attn.out_proj"].float().view(H, D).sum(1).sqrt()
        columns = layer.attn.out_proj.weight.view(-1, H, D).pow(2).sum((0, 2)).sqrt()
        out.append(activation * columns)
    return out


def choose_heads(dims: ModelDims, importance: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Per block, the kept query heads (ascending): the most important ones within every group, or the most
    important whole groups."""
    H, K = dims.n_heads, dims.n_kv_heads
    new_h, new_k = kept_heads(dims, fraction)
    keep = []
    for imp in importance:
        if new_k == K:  # within each group of H // K query heads
            groups = imp.view(K, H // K)
            top = groups.topk(new_h // K, dim=1).indices + torch.arange(K)[:, None] * (H // K)
            keep.append(top.flatten().sort().values)
        else:
            keep.append(imp.topk(new_h).indices.sort().values)
    return keep


def kv_heads_of(dims: ModelDims, heads: torch.Tensor) -> torch.Tensor:
    """The key/value heads the query ``heads`` read (SDPA's grouped-query pairing: head h reads h // group)."""
    return (heads // (dims.n_heads // dims.n_kv_heads)).unique()


@torch.no_grad()
def remove_parts(model: Decoder, channels: list[torch.Tensor] | None, heads: list[torch.Tensor] | None) -> Decoder:
    """A decoder holding ``model``'s weights with only MLP channels ``channels[i]`` and query heads ``heads[i]``
    (with their key/value heads) of block i (ascending indices; None keeps all)."""
    dims = model.dims
    H, K, D, F = dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.ffn_hidden
    new = {}
    if channels is not None:
        new["ffn_hidden"] = len(channels[0])
    if heads is not None:
        new |= {"n_heads": len(heads[0]), "n_kv_heads": len(kv_heads_of(dims, heads[0])), "explicit_head_dim": D}
    small = Decoder(dataclasses.replace(dims, **new))
    state = model.state_dict()
    for i in range(dims.n_layers):
        if channels is not None:
            kept = channels[i]
            gate_up = state[f"layers.{i}.mlp.gate_up_proj.weight"]
            state[f"layers.{i}.mlp.gate_up_proj.weight"] = torch.cat([gate_up[kept], gate_up[F + kept]])
            state[f"layers.{i}.mlp.down_proj.weight"] = state[f"layers.{i}.mlp.down_proj.weight"][:, kept]
        if heads is not None:
            q_heads, kv = heads[i], kv_heads_of(dims, heads[i])
            rows = lambda hs, start: (start + hs[:, None] * D + torch.arange(D)).flatten()  # noqa: E731
            qkv = state[f"layers.{i}.attn.qkv_proj.weight"]
            state[f"layers.{i}.attn.qkv_proj.weight"] = qkv[torch.cat([rows(q_heads, 0), rows(kv, H * D),
                                                                       rows(kv, (H + K) * D)])]
            state[f"layers.{i}.attn.out_proj.weight"] = state[f"layers.{i}.attn.out_proj.weight"][:, rows(q_heads, 0)]
    small.load_state_dict(state)
    return small.eval()


def prune_structured(model: Decoder, mlp_fraction: float, head_fraction: float, norms: dict[str, torch.Tensor]
                     ) -> tuple[Decoder, list[torch.Tensor] | None, list[torch.Tensor] | None]:
    """The smaller decoder without each block's least important ``mlp_fraction`` of MLP channels and
    ``head_fraction`` of attention heads (0: none), and the kept channels and heads."""
    channels = heads = None
    if mlp_fraction:
        n = kept_channels(model.dims.ffn_hidden, mlp_fraction)
        channels = [imp.topk(n).indices.sort().values for imp in channel_importance(model, norms)]
    if head_fraction:
        heads = choose_heads(model.dims, head_importance(model, norms), head_fraction)
    return remove_parts(model, channels, heads), channels, heads


@torch.no_grad()
def mask_parts(model: Decoder, channels: list[torch.Tensor] | None, heads: list[torch.Tensor] | None) -> None:
    """The full-size reference, in place: the gate and up rows of every channel not in ``channels`` zeroed (silu(0)
    * 0 adds nothing), and the output-projection columns of every query head not in ``heads``."""
    F, H, D = model.dims.ffn_hidden, model.dims.n_heads, model.dims.head_dim
    for i, layer in enumerate(model.layers):
        if channels is not None:
            drop = torch.ones(F, dtype=torch.bool)
            drop[channels[i]] = False
            w = layer.mlp.gate_up_proj.weight
            w[:F][drop] = 0
            w[F:][drop] = 0
        if heads is not None:
            drop = torch.ones(H, dtype=torch.bool)
            drop[heads[i]] = False
            layer.attn.out_proj.weight.view(-1, H, D)[:, drop] = 0
