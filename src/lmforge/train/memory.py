"""Memory and speed around the training loop, applied from outside the model.

- activation checkpointing: each ``model.layers[i]`` wrapped by torch's ``checkpoint_wrapper`` (as
  torchtitan does); parameter and state-dict names are unchanged, so checkpoints stay interchangeable;
- ``torch.compile`` of each block in place (opt-in);
- the micro-batch: checked against the memory available before any work, or chosen (``auto``) as the
  largest that fits, gradient accumulation keeping the global batch;
- an out-of-memory failure turned into one line with the estimator's suggestion;
- memory released between stages.
"""

from __future__ import annotations

import gc
import os

import torch
from torch import nn

from lmforge.core.progress import info
from lmforge.errors import RecipeError, TrainingError
from lmforge.estimate.memory import GIB, estimate_memory, largest_micro_batch
from lmforge.estimate.parallel import Parallel
from lmforge.model.config import ModelDims
from lmforge.train.config import TrainConfig


def apply_activation_checkpointing(model: nn.Module) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block)


def compile_model_parts(model: nn.Module, head: bool = True) -> None:
    """``torch.compile`` each block in place, and the final norm + LM head + loss (``Decoder.head``), where
    the compiler fuses the cross-entropy over the vocabulary that eager mode runs as separate passes."""
    for block in model.layers:
        block.compile()
    if head:
        model.head = torch.compile(model.head)


def apply_memory_options(model: nn.Module, cfg: TrainConfig, tensor_parallel: bool = False) -> None:
    """``train.activation_checkpointing`` and ``train.compile``, block by block: checkpointing first, so the
    compiled region is the checkpointed block, as torchtitan orders them. Under tensor parallelism each
    compiled block is checkpointed instead: torch 2.13 fails to compile a checkpointed block of DTensors
    (a DeviceMesh among the tensors saved for backward); the other order trains the same."""
    if cfg.compile and tensor_parallel:  # the head stays eager: its loss runs on vocabulary shards (loss_parallel)
        compile_model_parts(model, head=False)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile and not tensor_parallel:
        compile_model_parts(model)


def release_memory() -> None:
    """Give memory back between stages: collect cycles and return cached GPU blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def memory_limit_bytes(cfg: TrainConfig, device: torch.device) -> int:
    """What one process may use: ``train.memory_limit_gb``, else the GPU's memory, else the machine's."""
    if cfg.memory_limit_gb is not None:
        return int(cfg.memory_limit_gb * GIB)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _parallel(parallel: Parallel | int) -> Parallel:
    """Degrees of parallelism; a plain number is that many data-parallel replicas."""
    return Parallel(dp=parallel) if isinstance(parallel, int) else parallel


def _estimate(cfg: TrainConfig, dims: ModelDims, seq_len: int, micro: int, accumulation: int, device: torch.device,
              parallel: Parallel | int):
    return estimate_memory(dims, micro_batch=micro, seq_len=seq_len, optimizer=cfg.optimizer,
                           momentum=momentum_of(cfg), precision=cfg.precision,
                           activation_checkpointing=cfg.activation_checkpointing, accumulation=accumulation,
                           device=device.type, parallel=_parallel(parallel))


def momentum_of(cfg: TrainConfig) -> float:
    """The momentum the optimizer state estimate counts (RMSprop's or SGD's; others keep their own)."""
    return cfg.rmsprop.momentum if cfg.optimizer == "rmsprop" else cfg.sgd.momentum


def plan_micro_batch(cfg: TrainConfig, dims: ModelDims, seq_len: int, parallel: Parallel | int,
                     device: torch.device) -> int | None:
    """Check before any work that training fits memory; returns the micro-batch to use (None: the
    per-process batch). ``auto`` picks the largest divisor of the per-process batch that fits."""
    parallel = _parallel(parallel)
    per_rank = cfg.batch_size // parallel.data_ranks  # the layout check has made sure that it divides
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


def out_of_memory_error(cfg: TrainConfig, dims: ModelDims, seq_len: int, micro: int, parallel: Parallel | int,
                        device: torch.device) -> TrainingError:
    """One line: what ran out, what the estimator predicted, and what would fit."""
    parallel = _parallel(parallel)
    per_rank = cfg.batch_size // parallel.data_ranks
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
