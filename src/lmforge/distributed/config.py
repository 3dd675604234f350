"""``parallel:`` in a recipe: how the processes torchrun starts share the work.

``pp * dp_replicate * dp_shard * tp`` must equal the number of processes (``--nproc`` x ``--nnodes``); one
of the three data/tensor degrees may be ``-1`` (or ``auto``): whatever the others leave. The default,
``dp_replicate: -1``, is plain data parallelism (DDP) over every process, and a single process on one.
``pp`` splits the decoder's blocks into pipeline stages (``distributed/pipeline.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.core.config import StrictModel

AUTO = -1
PIPELINE_SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b", "zero_bubble")


class ParallelConfig(StrictModel):
    dp_replicate: int = Field(default=AUTO, description="data-parallel replicas: DDP, or HSDP's replica groups "
                                                        "with dp_shard > 1 or tp > 1")
    dp_shard: int = Field(default=1, description="FSDP2: parameters, gradients and optimizer state sharded over "
                                                 "this many processes")
    tp: int = Field(default=1, description="tensor parallel: attention heads and MLP columns split over this many "
                                           "processes (Megatron-style, with sequence parallel norms)")

    pp: int = Field(default=1, ge=1, description="pipeline parallel: the decoder's blocks split into this many "
                                                 "stages, one group of processes each (outermost mesh dim)")
    pp_schedule: Literal[PIPELINE_SCHEDULES] = Field(
        default="1f1b", description="pipeline schedule: gpipe, 1f1b, interleaved_1f1b (virtual stages per "
                                    "process), zero_bubble (interleaved, backward split into input and weight parts)")
    pp_microbatches: int | None = Field(default=None, ge=1, description="micro-batches per step through the "
                                        "pipeline; default: the number of stages; must divide each data-parallel "
                                        "rank's share of train.batch_size")
    pp_virtual_stages: int | None = Field(default=None, ge=1, description="stages per process: 1 for gpipe "
                                          "and 1f1b, default 2 for the interleaved schedules")
    pp_split: Literal["even", "parameters"] | list[int] = Field(
        default="even", description="how blocks are split into stages: even (the stages must divide model.n_layers), "
                                    "parameters (balanced by parameter count, the embedding counted with the first "
                                    "stage and the head with the last), or blocks per stage in order")

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
