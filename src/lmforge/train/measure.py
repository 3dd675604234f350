"""Measured peak memory of a real training step on CPU, to check the estimator against.

torch's CPU allocator keeps no statistics and the process RSS mixes tensors with the interpreter, the
libraries and freed-but-cached pages, so neither compares like with like with a prediction of tensor
bytes. ``LiveTensorBytes`` counts exactly what ``torch.cuda.memory_allocated`` counts on a GPU: a
``TorchDispatchMode`` sees every tensor an op returns, records each new storage's size, and a weakref
finalizer on the storage subtracts it when torch frees it. The peak of that running sum is the peak of
live tensor bytes. (Scratch buffers a kernel allocates and frees inside one op are not seen; on a GPU
they are.)

The step measured is the loop's own ``train_step`` (precision policy, activation checkpointing and
optimizer as training builds them) on random tokens; the second update is measured, once the optimizer
state exists.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lmforge.model.config import ModelDims


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live CPU tensor storages, and their peak, while the mode is active."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # storage data pointer -> bytes

    def reset_peak(self) -> None:
        self.peak = self.live

    def track(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._sizes:
            return  # a view of a storage already counted
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, size)

    def _freed(self, key: int, size: int) -> None:
        if self._sizes.get(key) == size:
            del self._sizes[key]
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            self.track(item)
        return out


class RandomWindows:
    """Stands in for token shards: window ``i`` is always the same random tokens."""

    def __init__(self, vocab_size: int, seed: int = 0):
        self.vocab_size, self.seed = vocab_size, seed

    def windows(self, indices, seq_len: int) -> np.ndarray:
        rows = [np.random.default_rng([self.seed, int(i)]).integers(0, self.vocab_size, seq_len + 1) for i in indices]
        return np.stack(rows).astype(np.int64)  # (B, T+1)


def measure_training_peak(dims: ModelDims, *, micro_batch: int, seq_len: int, accumulation: int = 1,
                          optimizer: str = "adamw", precision: str = "fp32", activation_checkpointing: bool = False,
                          seed: int = 0, device: str = "cpu") -> dict:
    """Peak allocated tensor bytes of one training update (``accumulation`` micro-batches): live CPU tensor
    storages on CPU, ``torch.cuda.max_memory_allocated`` on a GPU."""
    from lmforge.distributed.context import DistContext
    from lmforge.model.decoder import Decoder
    from lmforge.train.batches import BatchPlan
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import train_step
    from lmforge.distributed.parallelize import apply_activation_checkpointing
    from lmforge.train.memory import release_memory
    from lmforge.train.optim import build_optimizer
    from lmforge.train.precision import precision_policy

    batch = micro_batch * accumulation
    cfg = TrainConfig(optimizer=optimizer, batch_size=batch, micro_batch_size=micro_batch, precision=precision)
    ctx, data = DistContext(device=torch.device(device)), RandomWindows(dims.vocab_size, seed)
    cuda = ctx.device.type == "cuda"
    plan = BatchPlan(64 * batch, batch, seed, micro_batch_size=micro_batch)
    tracker = LiveTensorBytes()
    with contextlib.nullcontext() if cuda else tracker:
        torch.manual_seed(seed)
        model = Decoder(dims).to(ctx.device)
        if activation_checkpointing:
            apply_activation_checkpointing(model)
        opt, policy = build_optimizer(model, cfg), precision_policy(precision, ctx.device)
        train_step(model, model, opt, plan, data, 0, seq_len, 1e-3, 1.0, ctx, policy)  # creates the state
        if cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        tracker.reset_peak()
        loss, _, _ = train_step(model, model, opt, plan, data, 1, seq_len, 1e-3, 1.0, ctx, policy)
        if cuda:
            peak, after = torch.cuda.max_memory_allocated(ctx.device), torch.cuda.memory_allocated(ctx.device)
        else:
            peak, after = tracker.peak, tracker.live
    del model, opt
    release_memory()
    return {"peak": peak, "after_step": after, "loss": loss}


class MemoryCase(NamedTuple):
    """One configuration of the estimator's accuracy check (tests/unit/test_estimate_accuracy.py asserts
    ``TESTED_CASES``; bench/estimator_accuracy.py tabulates those and ``BENCH_CASES``, bench/gpu_estimate.py
    those and GPU-sized ones)."""

    size: str
    overrides: dict
    vocab: int
    micro_batch: int
    seq_len: int
    checkpointing: bool
    precision: str
    optimizer: str
    accumulation: int

    def dims(self) -> ModelDims:
        from lmforge.model.config import ModelConfig

        return ModelConfig(size=self.size, **self.overrides).dims(self.vocab)

    def predicted_and_measured(self, device: str = "cpu"):
        """(the estimator's ``MemoryEstimate``, the measured peak of allocated tensor bytes) on ``device``."""
        from lmforge.estimate.memory import estimate_memory

        dims = self.dims()
        options = dict(micro_batch=self.micro_batch, seq_len=self.seq_len, accumulation=self.accumulation,
                       optimizer=self.optimizer, precision=self.precision, activation_checkpointing=self.checkpointing,
                       device=device)
        return estimate_memory(dims, **options), measure_training_peak(dims, **options)["peak"]


TESTED_CASES = [MemoryCase(*row) for row in (
    ("debug", {}, 512, 4, 64, False, "fp32", "adamw", 1),
    ("debug", {}, 512, 16, 128, False, "fp32", "adamw", 1),
    ("debug", {}, 512, 16, 128, True, "fp32", "adamw", 1),
    ("debug", {}, 512, 8, 64, False, "bf16", "adamw", 1),
    ("debug", {}, 512, 4, 64, False, "fp32", "adafactor", 2),
    ("debug", {"n_kv_heads": 4, "tie_embeddings": False}, 1000, 8, 96, False, "fp32", "muon", 1),
    ("tiny", {}, 4096, 2, 64, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, True, "fp32", "adamw", 1),
)]
BENCH_CASES = [MemoryCase(*row) for row in (  # larger or slower: the benchmark only
    ("debug", {"dropout": 0.1}, 512, 8, 128, False, "fp32", "sgd", 1),
    ("tiny", {}, 4096, 8, 256, False, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 8, 256, True, "fp32", "adamw", 1),
    ("tiny", {}, 4096, 4, 256, False, "fp32", "lion", 2),
    ("tiny", {}, 4096, 4, 128, False, "bf16", "adamw", 1),
    ("tiny", {}, 4096, 4, 128, True, "bf16", "adamw", 1),
)]
