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
    if tp > 1:
        for what, count in (("model.n_heads", dims.n_heads), ("model.n_kv_heads", dims.n_kv_heads),
                            ("model.ffn_hidden", dims.ffn_hidden)):
            if count % tp:
                raise RecipeError(f"tp={tp} does not divide {what} ({count}): tensor parallelism splits it evenly")
    if batch_size % par.data_ranks:
        raise RecipeError(f"train.batch_size: {batch_size} sequences cannot be split evenly over "
                          f"{par.data_ranks} data-parallel ranks (dp * fsdp)")
    return par
