"""``train:`` in a recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.core.config import StrictModel


class TrainConfig(StrictModel):
    max_steps: int = Field(default=200, ge=1)
    batch_size: int = Field(default=16, ge=1, description="global batch: sequences per optimizer step")
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="sequences per forward pass on one process; default: batch_size / processes"
    )
    seq_len: int | None = Field(default=None, ge=2, description="default: the model's context length")
    lr: float = Field(default=3e-3, gt=0, le=10)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=20, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    eval_every: int = Field(default=50, ge=0, description="0: only at the start and the end")
    eval_batches: int = Field(default=8, ge=1)
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    max_nonfinite_in_row: int = Field(default=5, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check(self):
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must not exceed batch_size ({self.batch_size})"
            )
        return self
