"""``parallel:`` in a recipe: how the processes torchrun starts share the work.

``dp_replicate * dp_shard * tp`` must equal the number of processes (``--nproc`` x ``--nnodes``); one of
the three may be ``-1`` (or ``auto``): whatever the other two leave. The default, ``dp_replicate: -1``,
is plain data parallelism (DDP) over every process, and a single process on one.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lmforge.core.config import StrictModel

AUTO = -1


class ParallelConfig(StrictModel):
    dp_replicate: int = Field(default=AUTO, description="data-parallel replicas: DDP, or HSDP's replica groups "
                                                        "with dp_shard > 1 or tp > 1")
    dp_shard: int = Field(default=1, description="FSDP2: parameters, gradients and optimizer state sharded over "
                                                 "this many processes")
    tp: int = Field(default=1, description="tensor parallel: attention heads and MLP columns split over this many "
                                           "processes (Megatron-style, with sequence parallel norms)")

    @field_validator("dp_replicate", "dp_shard", "tp", mode="before")
    @classmethod
    def _auto(cls, value):
        return AUTO if value == "auto" else value

    @field_validator("dp_replicate", "dp_shard", "tp")
    @classmethod
    def _positive_or_auto(cls, value: int) -> int:
        if value != AUTO and value < 1:
            raise ValueError("must be at least 1, or -1 / auto for what the other degrees leave")
        return value

    @model_validator(mode="after")
    def _one_auto(self):
        autos = [k for k in ("dp_replicate", "dp_shard", "tp") if getattr(self, k) == AUTO]
        if len(autos) > 1:
            raise ValueError(f"only one degree may be -1 / auto (got {', '.join(autos)})")
        return self
