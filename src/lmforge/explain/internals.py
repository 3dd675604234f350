"""One forward pass with the insides kept: every block's input to its attention (after the norm), its attention
output, and the residual stream after each block (``Trace``), through forward hooks on an unchanged decoder."""

from __future__ import annotations

import dataclasses

import torch

from lmforge.model.decoder import Decoder


@dataclasses.dataclass
class Trace:
    logits: torch.Tensor  # (T, V)
    attention_inputs: list[torch.Tensor]  # per block (T, C): attn_norm(x), what the attention reads
    attention_outputs: list[torch.Tensor]  # per block (T, C): the attention's output projection
    residuals: list[torch.Tensor]  # the embeddings, then each block's output: n_layers + 1 of (T, C)


@torch.no_grad()
def trace(model: Decoder, tokens: list[int]) -> Trace:
    """The insides of ``model`` on one sequence of ``tokens``."""
    inputs, outputs, residuals = [], [], []

    def keep_attention(module, args, out) -> None:  # a hook returning something would replace the output
        inputs.append(args[0][0])
        outputs.append(out[0])

    def keep_residual(module, args, out) -> None:
        residuals.append(out[0])

    handles = [model.embed_tokens.register_forward_hook(keep_residual)]
    for layer in model.layers:
        handles.append(layer.attn.register_forward_hook(keep_attention))
        handles.append(layer.register_forward_hook(keep_residual))
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([tokens], device=next(model.parameters()).device))[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Trace(logits, inputs, outputs, residuals)
