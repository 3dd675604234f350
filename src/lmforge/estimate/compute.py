"""Compute: parameters, training FLOPs per token, and the step time a peak FLOP/s at a given MFU implies."""

from __future__ import annotations

import dataclasses

from lmforge.model.config import ModelDims
from lmforge.model.decoder import count_parameters, training_flops_per_token


@dataclasses.dataclass
class ComputeEstimate:
    parameters: int
    non_embedding_parameters: int
    flops_per_token: float  # model FLOPs: 6N + attention (what MFU counts)
    attention_flops_per_token: float
    hardware_flops_per_token: float  # what the device executes: activation checkpointing reruns the forward
    tokens_per_step: int
    peak_flops: float | None  # per device
    mfu: float
    devices: int

    @property
    def step_seconds(self) -> float | None:
        if not self.peak_flops:
            return None
        return self.tokens_per_step * self.flops_per_token / (self.peak_flops * self.mfu * self.devices)

    @property
    def tokens_per_second(self) -> float | None:
        seconds = self.step_seconds
        return self.tokens_per_step / seconds if seconds else None

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), step_seconds=self.step_seconds, tokens_per_second=self.tokens_per_second)


def estimate_compute(dims: ModelDims, *, seq_len: int, batch_size: int, peak_flops: float | None, mfu: float,
                     devices: int = 1, activation_checkpointing: bool = False) -> ComputeEstimate:
    """``training_flops_per_token`` is the decoder's own count (6N + 12 * n_layers * d_model * seq_len);
    with activation checkpointing the hardware also reruns each block's forward (one third more)."""
    flops = training_flops_per_token(dims, seq_len)
    attention = 12.0 * dims.n_layers * dims.d_model * seq_len
    hardware = flops * 4 / 3 if activation_checkpointing else flops
    return ComputeEstimate(
        parameters=count_parameters(dims),
        non_embedding_parameters=count_parameters(dims, non_embedding=True),
        flops_per_token=flops,
        attention_flops_per_token=attention,
        hardware_flops_per_token=hardware,
        tokens_per_step=batch_size * seq_len,
        peak_flops=peak_flops,
        mfu=mfu,
        devices=devices,
    )
