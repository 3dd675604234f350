"""The estimator's command-line degrees (``--dp``, ``--fsdp``, ``--tp``, ``--world-size``) as a ``Layout``.

``dp * fsdp * tp`` processes make the world; each of the ``dp * fsdp`` data-parallel ranks takes an
equal share of the global batch. Impossible layouts are rejected with the reason, before any work.
"""

from __future__ import annotations

from lmforge.distributed.layout import Layout, check_fits
from lmforge.errors import RecipeError
from lmforge.model.config import ModelDims


def resolve_parallel(dims: ModelDims, batch_size: int, *, dp: int | None = None, fsdp: int = 1, tp: int = 1,
                     world_size: int | None = None) -> Layout:
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
    layout = Layout(dp_replicate=dp or 1, dp_shard=fsdp, tp=tp)
    check_fits(layout.dp_replicate, layout.dp_shard, layout.tp, dims=dims, batch_size=batch_size)
    return layout
