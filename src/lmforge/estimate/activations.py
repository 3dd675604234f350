"""What one training step keeps alive besides the model: the tensors autograd saves, op by op.

Counted from the decoder's actual ops (model/decoder.py, model/fused_ops.py) for one micro-batch of
``B`` sequences of ``T`` tokens; ``tests/unit/test_estimate_activations.py`` checks every count against
the tensors torch's autograd really saves (``saved_tensors_hooks``), so a change to the decoder that
changes its memory fails that test instead of silently making the estimate wrong.

Precision changes what is saved: in fp32 the decoder's fused RMSNorm, rotary and SwiGLU save only their
inputs; under autocast (bf16/fp16) matmul inputs are saved as low-precision copies, the residual stream
stays fp32, RMSNorm takes torch's composite path (it also saves the normalized input), the weights are
cast once per step (autocast's cache, kept until their backward), and the loss takes the plain path
(full logits, log-softmax saved in fp32) instead of the chunked fused one.
"""

from __future__ import annotations

import dataclasses
import math

from lmforge.model.config import ModelDims
from lmforge.model.fused_ops import loss_chunk_rows

FP32 = 4


@dataclasses.dataclass(frozen=True)
class StepShape:
    """Everything the activation memory of one micro-batch depends on."""

    dims: ModelDims
    micro_batch: int
    seq_len: int
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "cpu"  # cpu | cuda
    tp: int = 1  # tensor-parallel degree (with sequence parallelism, as torchtitan)
    logits_loss: bool = False  # the loss over whole logits (a pipeline's last stage), not the fused one

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def mixed(self) -> bool:
        return self.precision != "fp32"

    @property
    def compute_bytes(self) -> int:
        return 2 if self.mixed else FP32

    @property
    def plain(self) -> bool:
        """Whether the decoder takes torch's plain formulas instead of its fused ops: under autocast for the
        norms and the loss, and for every op on tensor-parallel DTensors."""
        return self.mixed or self.tp > 1


def attention_backend(s: StepShape) -> str:
    """Which kernel ``scaled_dot_product_attention`` picks for our call (causal, no mask, GQA allowed).

    CPU: the flash kernel (GQA without copies) unless dropout is on. CUDA: flash for bf16/fp16; in fp32
    the memory-efficient kernel, which has no GQA, so grouped heads fall back to the math path.
    """
    d = s.dims
    if s.device == "cpu":
        return "math" if d.dropout > 0 else "flash"
    if s.mixed:
        return "flash"
    return "math" if d.n_kv_heads != d.n_heads else "efficient"


def block_saved(s: StepShape) -> dict[str, int]:
    """Bytes autograd saves in one block for the backward pass (parameters and their casts excluded)."""
    return {**attention_half_saved(s), **mlp_half_saved(s)}


def _norm_saved(s: StepShape) -> int:
    norm = s.tokens * (s.dims.d_model * FP32 + FP32) // s.tp  # input (the residual stream, fp32) and 1/rms
    if s.plain:
        norm += s.tokens * s.dims.d_model * FP32 // s.tp  # torch's composite rms_norm also keeps x * 1/rms
    return norm


def attention_half_saved(s: StepShape) -> dict[str, int]:
    """attn_norm -> qkv_proj -> rotary -> scaled_dot_product_attention -> out_proj."""
    d, t = s.dims, s.tp
    N, C, c = s.tokens, d.d_model, s.compute_bytes
    H, K, D = d.n_heads // t, d.n_kv_heads // t, d.head_dim
    items = {
        "attention norm": _norm_saved(s),
        "qkv projection input": N * C * c,  # the full sequence: all-gathered under sequence parallelism
        "attention (q, k, v, output, logsumexp)": _attention_saved(s, H, K, D),
        "output projection input": N * H * D * c,
    }
    if s.tp > 1:
        items["rotary (plain formula: the q/k/v projection output)"] = N * (H + 2 * K) * D * c
    if d.dropout > 0:
        items["attention dropout mask"] = N * C // t * _dropout_mask_bytes(s)
    return items


def _dropout_mask_bytes(s: StepShape) -> int:
    """The residual dropout's saved mask: bool from CUDA's fused kernel, the input's dtype on CPU."""
    return 1 if s.device == "cuda" else s.compute_bytes


def mlp_half_saved(s: StepShape) -> dict[str, int]:
    """mlp_norm -> gate_up_proj -> SwiGLU -> down_proj."""
    d, t = s.dims, s.tp
    N, C, F, c = s.tokens, d.d_model, d.ffn_hidden // t, s.compute_bytes
    items = {
        "MLP norm": _norm_saved(s),
        "gate/up projection input": N * C * c,
        "SwiGLU input (gate, up)": N * 2 * F * c,
        "down projection input": N * F * c,
    }
    if s.tp > 1:
        items["SwiGLU (plain formula: silu(gate))"] = N * F * c
    if d.dropout > 0:
        items["MLP dropout mask"] = N * C // t * _dropout_mask_bytes(s)
    return items


def _attention_saved(s: StepShape, H: int, K: int, D: int) -> int:
    B, T, c = s.micro_batch, s.seq_len, s.compute_bytes
    backend = attention_backend(s)
    if backend == "flash":  # q, k, v, output and logsumexp (B, H, T) in fp32
        return B * T * (H + 2 * K) * D * c + B * T * H * D * c + B * H * T * FP32
    if backend == "efficient":  # logsumexp padded to 32 positions
        return B * T * (H + 2 * K) * D * c + B * T * H * D * c + B * H * math.ceil(T / 32) * 32 * FP32
    # math: q and k scaled, k and v repeated to H heads, the softmax probabilities (B, H, T, T); with
    # dropout also its mask and the dropped probabilities (in the compute dtype; on CPU torch upcasts to fp32)
    c = FP32 if s.device == "cpu" else c
    probs = B * H * T * T * c * (3 if s.dims.dropout > 0 else 1)
    return 3 * B * T * H * D * c + probs


def mlp_backward_working(s: StepShape) -> int:
    """Temporary bytes at the busiest moment of the MLP's backward: the gradient of the SwiGLU output (F),
    of its fused input (2F) and silu(gate) (F), less the SwiGLU output's saved copy already freed (F)."""
    N, C, F, c = s.tokens, s.dims.d_model, s.dims.ffn_hidden // s.tp, s.compute_bytes
    return N * 3 * F * c + (N * C * c if s.mixed else 0)


def attention_backward_working(s: StepShape) -> int:
    """dq, dk, dv, the gradient of the attention output and of the fused projection output."""
    d, t = s.dims, s.tp
    H, K, D, c = d.n_heads // t, d.n_kv_heads // t, d.head_dim, s.compute_bytes
    work = s.tokens * (2 * (H + 2 * K) * D + H * D) * c
    if attention_backend(s) == "math":
        work += 2 * s.micro_batch * H * s.seq_len ** 2 * c  # gradient of the probabilities and of the scores
    return work


def checkpointed_block_saved(s: StepShape) -> int:
    """With activation checkpointing a block keeps only its input (fp32 residual stream, sharded by TP)."""
    return s.tokens * s.dims.d_model * FP32 // s.tp


def loss_memory(s: StepShape) -> dict[str, int]:
    """The final norm and the loss: bytes saved for backward, the forward's peak working memory on top of
    that, and the backward's peak working memory on top of that."""
    d = s.dims
    N, C, V = s.tokens, d.d_model, d.vocab_size // s.tp
    c = s.compute_bytes
    final_norm = N * (C * FP32 + FP32) + (N * C * FP32 if s.plain else 0)
    if not (s.plain or s.logits_loss):
        # fused chunked linear + cross-entropy: gradients of x (N, C) and of the head (V, C) computed in
        # forward; one chunk of logits (rows, V) reused; per-row scale, mask and targets
        rows = min(loss_chunk_rows(V), N)  # the loss's own rule, not a copy
        saved = N * C * FP32 + V * C * FP32
        forward = rows * V * FP32 + N * (FP32 + 1 + 8) + 3 * rows * FP32
        backward = N * C * FP32 + V * C * FP32  # the two gradients times the incoming gradient
    else:
        # plain path (autocast, tensor parallelism): logits (N, V) in the compute dtype (cast to fp32 under
        # autocast), log-softmax saved in fp32 (and the loss's 0-d total weight)
        saved = N * C * c + N * V * FP32 + FP32
        forward = N * V * (c + (FP32 if s.mixed else 0))
        backward = 2 * N * V * FP32  # gradients of the log-probabilities and of the fp32 logits
    return {"saved": final_norm + saved, "forward": forward, "backward": backward}
