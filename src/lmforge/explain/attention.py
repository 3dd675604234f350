"""Attention maps computed explicitly from a block's own weights (the decoder itself runs SDPA, which never forms
them), and attention rollout (Abnar & Zuidema 2020) across the blocks.

Written here because Captum and bertviz read maps a model returns (Hugging Face's ``output_attentions``), which
lmforge's decoder does not materialise."""

from __future__ import annotations

import math

import torch

from lmforge.model.decoder import Decoder
from lmforge.model.fused_ops import apply_rotary


@torch.no_grad()
def attention_maps(model: Decoder, attention_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per block, (n_heads, T, T): softmax(q k^T / sqrt(D)) under the causal mask, rows summing to 1 (query head h
    reads key/value head h // (n_heads / n_kv_heads), as SDPA's grouped-query attention does)."""
    dims = model.dims
    H, K, D = dims.n_heads, dims.n_kv_heads, dims.head_dim
    maps = []
    for layer, x in zip(model.layers, attention_inputs):
        T = x.shape[0]
        heads = layer.attn.qkv_proj(x).view(T, H + 2 * K, D).transpose(0, 1)  # (H + 2K, T, D)
        cos, sin = model.rope_cos[:T], model.rope_sin[:T]
        q, k = apply_rotary(heads[:H], cos, sin), apply_rotary(heads[H:H + K], cos, sin)
        k = k.repeat_interleave(H // K, dim=0)  # (H, T, D)
        scores = q @ k.transpose(1, 2) / math.sqrt(D)  # (H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        maps.append(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))
    return maps


@torch.no_grad()
def attention_outputs(model: Decoder, attention_inputs: list[torch.Tensor], maps: list[torch.Tensor]
                      ) -> list[torch.Tensor]:
    """Per block, (T, C): the maps applied to the values and the output projection: what the block's attention
    computes (a check that the maps are the ones the model uses)."""
    dims = model.dims
    H, K, D = dims.n_heads, dims.n_kv_heads, dims.head_dim
    out = []
    for layer, x, a in zip(model.layers, attention_inputs, maps):
        T = x.shape[0]
        v = layer.attn.qkv_proj(x).view(T, H + 2 * K, D).transpose(0, 1)[H + K:]  # (K, T, D)
        y = a @ v.repeat_interleave(H // K, dim=0)  # (H, T, D)
        out.append(layer.attn.out_proj(y.transpose(0, 1).reshape(T, H * D)))
    return out


def rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """(T, T) attention rollout: each block's head-averaged map with the residual path as identity,
    0.5 A + 0.5 I (rows renormalised), multiplied from the first block to the last."""
    T = maps[0].shape[-1]
    eye = torch.eye(T, dtype=maps[0].dtype, device=maps[0].device)
    total = eye
    for a in maps:
        step = 0.5 * a.mean(dim=0) + 0.5 * eye
        total = (step / step.sum(dim=-1, keepdim=True)) @ total
    return total
