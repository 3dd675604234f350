"""Parallel degrees: data parallel (replicas), FSDP (sharded data parallel) and tensor parallel.

``dp * fsdp * tp`` processes make the world; each of the ``dp * fsdp`` data-parallel ranks takes an
equal share of the global batch. Impossible layouts are rejected with the reason, before any work.
"""

from __future__ import annotations

import dataclasses

from lmforge.errors import RecipeError
from lmforge.model.config import ModelDims


@dataclasses.dataclass(frozen=True)
class Parallel:
    dp: int = 1
    fsdp: int = 1
    tp: int = 1

    @property
    def world_size(self) -> int:
        return self.dp * self.fsdp * self.tp

    @property
    def data_ranks(self) -> int:
        return self.dp * self.fsdp

    def describe(self) -> str:
        return f"dp={self.dp} fsdp={self.fsdp} tp={self.tp} ({self.world_size} device(s))"


def resolve_parallel(dims: ModelDims, batch_size: int, *, dp: int | None = None, fsdp: int = 1, tp: int = 1,
                     world_size: int | None = None) -> Parallel:
    """Check the degrees against each other, the world size, the model and the batch.

    Without ``dp`` it is whatever is left of the world size: ``world_size / (fsdp * tp)``.
    """
    for name, value in (("dp", dp), ("fsdp", fsdp), ("tp", tp), ("world size", world_size)):
        if value is not None and value < 1:
            raise RecipeError(f"{name}: must be at least 1 (got {value})")
    if world_size is not None:
        for name, value in (("fsdp", fsdp), ("tp", tp), ("dp", dp)):
            if value is not None and world_size % value:
                raise RecipeError(f"{name}={value} does not divide the world size {world_size}")
        if dp is None:
            if world_size % (fsdp * tp):
                raise RecipeError(f"fsdp * tp = {fsdp * tp} does not divide the world size {world_size}")
            dp = world_size // (fsdp * tp)
        if dp * fsdp * tp != world_size:
            raise RecipeError(f"dp * fsdp * tp = {dp}*{fsdp}*{tp} = {dp * fsdp * tp} does not match the world "
                              f"size {world_size}")
    par = Parallel(dp or 1, fsdp, tp)
    check_fits(par.dp, par.fsdp, par.tp, dims=dims, batch_size=batch_size)
    return par


# optimizers whose state is elementwise, so it shards and splits like the parameter it belongs to
SHARDABLE_OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "lion")


def check_fits(dp_replicate: int, dp_shard: int, tp: int, *, dims: ModelDims | None = None,
               batch_size: int | None = None, seq_len: int | None = None, optimizer: str | None = None,
               precision: str | None = None) -> None:
    """Degrees that multiply to the world size must also fit the model, the batch, the optimizer and the
    precision (for the estimator and for training alike): a one-line error naming the keys otherwise."""
    sharded = dp_shard > 1 or tp > 1
    if batch_size is not None and batch_size % (dp_replicate * dp_shard):
        raise RecipeError(f"train.batch_size: {batch_size} sequences cannot be split evenly over "
                          f"{dp_replicate * dp_shard} data-parallel ranks (parallel.dp_replicate x parallel.dp_shard = "
                          f"{dp_replicate} x {dp_shard})")
    if tp > 1 and dims is not None:
        for what, count in (("model.n_heads", dims.n_heads), ("model.n_kv_heads", dims.n_kv_heads),
                            ("model.ffn_hidden", dims.ffn_hidden), ("the vocabulary size", dims.vocab_size)):
            if count % tp:
                raise RecipeError(f"parallel.tp={tp} does not divide {what} ({count}): tensor parallelism splits it "
                                  "evenly over the tp processes")
    if dp_shard > 1 and dims is not None and dims.d_model % dp_shard:
        raise RecipeError(f"parallel.dp_shard={dp_shard} does not divide model.d_model ({dims.d_model}): FSDP2 "
                          "shards the fused q/k/v and gate/up projections on that dimension, and splits it evenly")
    if tp > 1 and seq_len is not None and seq_len % tp:
        raise RecipeError(f"parallel.tp={tp} does not divide train.seq_len ({seq_len}): sequence parallelism splits "
                          "every sequence evenly over the tp processes")
    if sharded and optimizer is not None and optimizer not in SHARDABLE_OPTIMIZERS:
        raise RecipeError(f"train.optimizer={optimizer} is not supported with sharded parameters (parallel.dp_shard > 1 "
                          f"or parallel.tp > 1); use one of {', '.join(SHARDABLE_OPTIMIZERS)}, or plain data "
                          "parallelism (parallel.dp_replicate)")
    if sharded and precision == "fp16":
        raise RecipeError("train.precision=fp16 is not supported with sharded parameters (parallel.dp_shard > 1 or "
                          "parallel.tp > 1): its gradient scaler is per process; use bf16")
