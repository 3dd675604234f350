"""Memory around the training loop (activation checkpointing and compile are applied from outside, by
``distributed.parallelize``):

- the micro-batch: checked against the memory available before any work, or chosen (``auto``) as the
  largest that fits, gradient accumulation keeping the global batch;
- an out-of-memory failure turned into one line with the estimator's suggestion;
- memory released between stages.
"""

from __future__ import annotations

import gc

import torch

from lmforge.core.progress import info
from lmforge.errors import RecipeError, TrainingError
from lmforge.distributed.layout import Layout
from lmforge.estimate.memory import GIB, estimate_memory, largest_micro_batch, memory_limit_bytes, momentum_of
from lmforge.model.config import ModelDims
from lmforge.train.config import TrainConfig


def release_memory() -> None:
    """Give memory back between stages: collect cycles and return cached GPU blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _estimate(cfg: TrainConfig, dims: ModelDims, seq_len: int, micro: int, accumulation: int, device: torch.device,
              parallel: Layout):
    return estimate_memory(dims, micro_batch=micro, seq_len=seq_len, optimizer=cfg.optimizer,
                           momentum=momentum_of(cfg), precision=cfg.precision,
                           activation_checkpointing=cfg.activation_checkpointing, accumulation=accumulation,
                           device=device.type, parallel=parallel)


def plan_micro_batch(cfg: TrainConfig, dims: ModelDims, seq_len: int, parallel: Layout,
                     device: torch.device) -> int | None:
    """Check before any work that training fits memory; returns the micro-batch to use (None: the
    per-process batch). ``auto`` picks the largest divisor of the per-process batch that fits."""
    per_rank = cfg.batch_size // parallel.dp  # the layout check has made sure that it divides
    limit = memory_limit_bytes(cfg, device)

    def fits(micro: int) -> bool:
        est = _estimate(cfg, dims, seq_len, micro, per_rank // micro, device, parallel)
        return est.device_total <= limit

    smallest = _estimate(cfg, dims, seq_len, 1, per_rank, device, parallel)
    if smallest.device_total > limit:
        raise RecipeError(
            f"train: even one sequence of {seq_len} tokens per micro-batch needs about "
            f"{smallest.device_total / GIB:.2f} GiB on {device.type} (peak in the {smallest.peak_phase}), more than "
            f"the {limit / GIB:.2f} GiB available (train.memory_limit_gb or the device); use a smaller model, "
            f"train.seq_len, or train.activation_checkpointing=true")
    if cfg.micro_batch_size != "auto":
        micro = cfg.micro_batch_size or per_rank
        if per_rank % micro == 0 and not fits(micro):
            info(f"[yellow]warning:[/yellow] micro-batch {micro} x {seq_len} tokens is estimated to need more than "
                 f"the {limit / GIB:.2f} GiB available; train.micro_batch_size=auto would pick one that fits")
        return cfg.micro_batch_size
    divisors = [m for m in range(1, per_rank + 1) if per_rank % m == 0]
    micro = largest_micro_batch(fits, divisors)
    info(f"micro-batch size (auto): {micro} of {per_rank} sequences per process fit {limit / GIB:.2f} GiB")
    return micro


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def out_of_memory_error(cfg: TrainConfig, dims: ModelDims, seq_len: int, micro: int, parallel: Layout,
                        device: torch.device) -> TrainingError:
    """One line: what ran out, what the estimator predicted, and what would fit."""
    per_rank = cfg.batch_size // parallel.dp
    est = _estimate(cfg, dims, seq_len, micro, per_rank // micro, device, parallel)
    smaller = [m for m in range(1, micro) if per_rank % m == 0]
    hint = (f"try train.micro_batch_size={max(smaller)} (gradient accumulation keeps the batch) or "
            "train.micro_batch_size=auto" if smaller else "try a shorter train.seq_len or a smaller model")
    if not cfg.activation_checkpointing:
        hint += ", or train.activation_checkpointing=true"
    return TrainingError(
        f"out of memory on {device.type} at micro-batch {micro} x {seq_len} tokens: the estimator predicts a "
        f"{est.device_total / GIB:.2f} GiB peak (weights {est.weights / GIB:.2f}, optimizer state "
        f"{est.optimizer_state / GIB:.2f}, activations {est.activations / GIB:.2f} GiB; see lmforge estimate); {hint}")


def probe_micro_batch(step_fn, micro: int, candidates: list[int]) -> int:
    """CUDA: run ``step_fn(micro)`` (a forward and backward that changes nothing) and halve on OOM."""
    for m in sorted((c for c in candidates if c <= micro), reverse=True):
        try:
            step_fn(m)
            return m
        except torch.OutOfMemoryError:
            pass
        release_memory()  # outside the except block: the traceback no longer holds the failed step's tensors
    raise TrainingError("out of memory on cuda even at micro-batch 1; try train.activation_checkpointing=true")
