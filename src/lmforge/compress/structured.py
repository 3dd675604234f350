"""Structured pruning of MLP channels: every block keeps the same number of its most important channels (the
decoder has one ``ffn_hidden``), giving a smaller dense decoder that computes exactly what the full one does with
the removed channels masked (their gate and up rows zero: silu(0) * 0 adds nothing).

A channel's importance is its activation norm over the calibration tokens (the down projection's input norm,
gathered with the other layers' in ``compress.calibration``) times the norm of its down-projection column: the
size of what it writes into the residual stream."""

from __future__ import annotations

import dataclasses

import torch

from lmforge.model.decoder import Decoder


def kept_channels(ffn_hidden: int, fraction: float) -> int:
    return max(1, ffn_hidden - round(fraction * ffn_hidden))


@torch.no_grad()
def channel_importance(model: Decoder, norms: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per block, (ffn_hidden,) importance of each MLP channel."""
    return [norms[f"layers.{i}.mlp.down_proj"].sqrt().float() * layer.mlp.down_proj.weight.norm(dim=0)
            for i, layer in enumerate(model.layers)]


@torch.no_grad()
def remove_channels(model: Decoder, keep: list[torch.Tensor]) -> Decoder:
    """A decoder of ``len(keep[0])`` MLP channels holding ``model``'s weights with only channels ``keep[i]`` of
    block i (ascending indices)."""
    dims = model.dims
    small = Decoder(dataclasses.replace(dims, ffn_hidden=len(keep[0])))
    state = model.state_dict()
    F = dims.ffn_hidden
    for i, kept in enumerate(keep):
        gate_up = state[f"layers.{i}.mlp.gate_up_proj.weight"]
        state[f"layers.{i}.mlp.gate_up_proj.weight"] = torch.cat([gate_up[kept], gate_up[F + kept]])
        state[f"layers.{i}.mlp.down_proj.weight"] = state[f"layers.{i}.mlp.down_proj.weight"][:, kept]
    small.load_state_dict(state)
    return small.eval()


def prune_mlp(model: Decoder, fraction: float, norms: dict[str, torch.Tensor]) -> tuple[Decoder, list[torch.Tensor]]:
    """The smaller decoder without each block's least important ``fraction`` of MLP channels, and the kept ones."""
    n = kept_channels(model.dims.ffn_hidden, fraction)
    keep = [imp.topk(n).indices.sort().values for imp in channel_importance(model, norms)]
    return remove_channels(model, keep), keep


@torch.no_grad()
def mask_channels(model: Decoder, keep: list[torch.Tensor]) -> None:
    """Zero the gate and up rows of every channel not in ``keep`` (the full-size reference), in place."""
    F = model.dims.ffn_hidden
    for i, layer in enumerate(model.layers):
        drop = torch.ones(F, dtype=torch.bool)
        drop[keep[i]] = False
        w = layer.mlp.gate_up_proj.weight
        w[:F][drop] = 0
        w[F:][drop] = 0
