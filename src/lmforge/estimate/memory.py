"""Peak memory of one training step on one device, simulated phase by phase.

A step's memory is not a sum of everything: gradients (freed by ``zero_grad(set_to_none=True)`` after
each update) do not yet exist while the forward pass holds all activations, and activations are gone by
the optimizer step. So the peak is the largest of:

- forward, inside the loss: weights + optimizer state + all saved activations + the loss's buffers
  (+ gradients of earlier micro-batches under gradient accumulation);
- backward, block by block from the last: each block frees what it saved and adds its weight gradients,
  with its working buffers on top (and, with activation checkpointing, its recomputed activations);
- the optimizer step: weights + gradients + optimizer state + the step's temporaries.

Byte counts per tensor come from ``activations.py`` and ``optimizer_state.py``. The peak predicts
allocated tensor bytes (``torch.cuda.max_memory_allocated`` on a GPU); ``device_total`` adds what a
process needs beyond its tensors (CUDA context and allocator slack, or the Python/torch runtime on CPU).
"""

from __future__ import annotations

import dataclasses
import math
import os

from lmforge.estimate.activations import (
    FP32,
    StepShape,
    attention_backward_working,
    block_saved,
    checkpointed_block_saved,
    loss_memory,
    mlp_backward_working,
    mlp_half_saved,
)
from lmforge.estimate.optimizer_state import (
    optimizer_state_bytes,
    optimizer_step_working_bytes,
    parameter_shapes,
)
from lmforge.distributed.layout import Layout
from lmforge.model.config import ModelDims
from lmforge.train.config import TrainConfig

GIB = 1024 ** 3
CUDA_CONTEXT = 600 * 1024 ** 2  # CUDA context, kernels and cuBLAS workspaces: outside the allocator's count
CUDA_SLACK = 0.10  # caching-allocator fragmentation: reserved beyond allocated
CPU_RUNTIME = 400 * 1024 ** 2  # the Python interpreter and torch's libraries


@dataclasses.dataclass
class MemoryEstimate:
    """Bytes on one device. The parts are sizes, not all alive at once; ``peak`` is the simulated maximum."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int  # saved for backward at the end of the forward pass (loss included)
    overhead: int  # rotary tables, the token batch, DDP gradient buckets, FSDP gather buffers
    peak: int  # allocated tensor bytes at the busiest moment
    peak_phase: str
    runtime: int  # beyond tensors: CUDA context + allocator slack, or the Python/torch runtime

    @property
    def device_total(self) -> int:
        return self.peak + self.runtime

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), device_total=self.device_total)


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "layers" and parts[1].isdigit() else None


@dataclasses.dataclass(frozen=True)
class _ParameterBytes:
    """fp32 bytes on one TP rank: matrices and the vocabulary are split over TP ranks, norms replicated."""

    block: int  # one block
    block_matrices: int
    block_mlp: int  # the MLP half of one block (mlp_norm, gate_up_proj, down_proj)
    block_mlp_matrices: int
    outside: int  # embeddings, final norm, (untied) LM head


def _parameter_bytes(dims: ModelDims, tp: int) -> _ParameterBytes:
    sums = dict(block=0, block_matrices=0, block_mlp=0, block_mlp_matrices=0, outside=0)
    for name, shape in parameter_shapes(dims):
        matrix = len(shape) >= 2
        size = math.prod(shape) // (tp if matrix else 1) * FP32
        if _layer_of(name) is None:
            sums["outside"] += size
        elif _layer_of(name) == 0:
            mlp = ".mlp" in name or "mlp_norm" in name
            sums["block"] += size
            sums["block_matrices"] += size if matrix else 0
            sums["block_mlp"] += size if mlp else 0
            sums["block_mlp_matrices"] += size if mlp and matrix else 0
    return _ParameterBytes(**sums)


def estimate_memory(dims: ModelDims, *, micro_batch: int, seq_len: int, optimizer: str = "adamw",
                    momentum: float | None = None, precision: str = "fp32", activation_checkpointing: bool = False,
                    accumulation: int = 1, device: str = "cpu", parallel: Layout = Layout()) -> MemoryEstimate:
    """Memory of one optimizer update of ``accumulation`` micro-batches of ``micro_batch`` x ``seq_len``
    tokens on one device. ``momentum`` (SGD, RMSprop) decides whether a momentum buffer exists."""
    s = StepShape(dims, micro_batch, seq_len, precision, device, parallel.tp)
    shard, L, ac = parallel.dp_shard, dims.n_layers, activation_checkpointing
    p = _parameter_bytes(dims, parallel.tp)
    weights = (L * p.block + p.outside) // shard
    gradients = weights
    full = sum(math.prod(shape) for _, shape in parameter_shapes(dims)) * FP32
    momentum = default_momentum(optimizer) if momentum is None else momentum
    state = optimizer_state_bytes(dims, optimizer, momentum) * (L * p.block + p.outside) // full // shard

    # low-precision copies of the matmul weights (autocast's cache), alive until their backward
    cast = s.compute_bytes / FP32 if s.mixed else 0.0
    block_cast, mlp_cast = int(p.block_matrices * cast), int(p.block_mlp_matrices * cast)
    head_cast = int(dims.vocab_size * dims.d_model * FP32 // parallel.tp * cast)
    rotary = dims.context_length * dims.head_dim * FP32  # cos and sin tables
    batch = micro_batch * (seq_len + 1) * 8  # int64 tokens
    buckets = gradients if parallel.dp_replicate > 1 and shard == 1 else 0  # DDP's gradient buckets
    gathered = (2 * p.block * s.compute_bytes // FP32 + p.block) if shard > 1 else 0  # FSDP all-gather/reduce
    overhead = rotary + batch + buckets + gathered
    persistent = weights + state + overhead

    block_all = sum(block_saved(s).values()) + block_cast  # what one block's backward needs
    mlp_all = sum(mlp_half_saved(s).values()) + mlp_cast
    kept_block = checkpointed_block_saved(s) if ac else block_all
    loss = loss_memory(s)
    activations = L * kept_block + loss["saved"] + head_cast

    grads_before = gradients if accumulation > 1 else 0  # later micro-batches add into existing gradients
    g = 0 if accumulation > 1 else 1  # whether backward creates gradients (else it adds into them)
    live = persistent + grads_before + activations
    peaks = {
        "forward (loss)": live + (L * block_cast if ac else 0) + loss["forward"],
        "backward (loss)": live + loss["backward"],
    }
    # the loss's saved tensors are gone; the head's gradient exists; dx of the residual stream flows back
    live += -loss["saved"] - head_cast + g * p.outside // shard + s.tokens * dims.d_model * FP32 // parallel.tp
    recompute = block_all if ac else 0  # activation checkpointing: the block's forward runs again first
    mlp_grads, attn_grads = g * p.block_mlp // shard, g * (p.block - p.block_mlp) // shard
    block_peak = 0
    for _ in range(L):  # from the last block to the first
        mlp_moment = live + recompute + mlp_backward_working(s) + mlp_grads
        attention_moment = live + recompute - mlp_all + mlp_grads + attn_grads + attention_backward_working(s)
        block_peak = max(block_peak, mlp_moment, attention_moment)
        live += g * p.block // shard - kept_block
    peaks["backward (blocks)"] = block_peak
    # the lookup's dense (V, C) gradient; tied to the head, it is added out of place to the head's gradient
    embedding = dims.vocab_size * dims.d_model * FP32 // parallel.tp
    peaks["backward (embedding)"] = live + (2 * embedding if dims.tie_embeddings else 0)
    peaks["optimizer step"] = persistent + gradients + optimizer_step_working_bytes(dims, optimizer, device, shard)

    phase = max(peaks, key=peaks.get)
    peak = peaks[phase]
    runtime = int(CUDA_CONTEXT + CUDA_SLACK * peak) if device == "cuda" else CPU_RUNTIME
    return MemoryEstimate(weights, gradients, state, activations, overhead, peak, phase, runtime)


def memory_limit_bytes(cfg: TrainConfig, device: torch.device) -> int:
    """What one process may use: ``train.memory_limit_gb``, else the GPU's memory, else the machine's."""
    if cfg.memory_limit_gb is not None:
        return int(cfg.memory_limit_gb * GIB)
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def momentum_of(cfg: TrainConfig) -> float:
    """The momentum the optimizer state estimate counts (RMSprop's or SGD's; others keep their own)."""
    return cfg.rmsprop.momentum if cfg.optimizer == "rmsprop" else cfg.sgd.momentum


def default_momentum(optimizer: str) -> float:
    """The recipe default of the momentum that decides whether SGD / RMSprop keep a buffer."""
    defaults = TrainConfig()
    return defaults.rmsprop.momentum if optimizer == "rmsprop" else defaults.sgd.momentum



def largest_micro_batch(fits, candidates: list[int]) -> int | None:
    """The largest candidate for which ``fits(micro_batch)`` holds (memory grows with the micro-batch, so
    the candidates are tried from the largest down), or None."""
    for micro in sorted(candidates, reverse=True):
        if fits(micro):
            return micro
    return None
