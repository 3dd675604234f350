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

import weakref

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
                          seed: int = 0) -> dict:
    """Peak live tensor bytes of one training update (``accumulation`` micro-batches) on CPU."""
    from lmforge.distributed.context import DistContext
    from lmforge.model.decoder import Decoder
    from lmforge.train.batches import BatchPlan
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import train_step
    from lmforge.train.memory import apply_activation_checkpointing
    from lmforge.train.optim import build_optimizer
    from lmforge.train.precision import precision_policy

    batch = micro_batch * accumulation
    cfg = TrainConfig(optimizer=optimizer, batch_size=batch, micro_batch_size=micro_batch, precision=precision)
    ctx, data = DistContext(device=torch.device("cpu")), RandomWindows(dims.vocab_size, seed)
    plan = BatchPlan(64 * batch, batch, seed, micro_batch_size=micro_batch)
    tracker = LiveTensorBytes()
    with tracker:
        torch.manual_seed(seed)
        model = Decoder(dims)
        if activation_checkpointing:
            apply_activation_checkpointing(model)
        opt, policy = build_optimizer(model, cfg), precision_policy(precision, ctx.device)
        train_step(model, model, opt, plan, data, 0, seq_len, 1e-3, 1.0, ctx, policy)  # creates the state
        tracker.reset_peak()
        loss, _, _ = train_step(model, model, opt, plan, data, 1, seq_len, 1e-3, 1.0, ctx, policy)
        peak, after = tracker.peak, tracker.live
    return {"peak": peak, "after_step": after, "loss": loss}
