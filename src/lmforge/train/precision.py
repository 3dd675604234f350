"""Precision policy (``train.precision``): where autocast runs and whether a gradient scaler guards fp16.

Weights, gradients and optimizer state stay fp32 in every policy ("mixed" precision): ``bf16`` and
``fp16`` only run the forward pass under ``torch.autocast``. fp16's narrow range needs loss scaling:
``torch.amp.GradScaler`` multiplies the loss before backward, unscales the gradients before clipping,
skips the update when they overflowed and adapts the scale. Its state is part of every checkpoint, so a
resumed run scales exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from lmforge.errors import RecipeError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class PrecisionPolicy:
    name: str
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer) -> None:
        """Bring the gradients back to their true size (before clipping and the finiteness check)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer, apply: bool) -> None:
        """Apply the update if ``apply``; with a scaler, always let it adapt its scale."""
        if self.scaler is None:
            if apply:
                optimizer.step()
            return
        if apply:
            self.scaler.step(optimizer)  # skips the update itself if unscale_ found inf/nan
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def precision_policy(name: str, device: torch.device) -> PrecisionPolicy:
    """The policy for ``train.precision`` on ``device``; refuses what this device cannot do."""
    if name not in DTYPES:
        raise RecipeError(f"train.precision: unknown precision {name!r} (fp32, bf16, fp16)")
    if name != "fp32" and not torch.amp.is_autocast_available(device.type):
        raise RecipeError(f"train.precision: {name} autocast is not available on {device.type}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RecipeError("train.precision: bf16 is not supported by this GPU; use fp16 (with a gradient scaler)")
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return PrecisionPolicy(name, device.type, scaler)
