"""Device choice and the peak FLOP/s table used for MFU."""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError

# Dense peak FLOP/s by GPU name fragment: (bf16/fp16 tensor core, tf32 tensor core). Public datasheets.
PEAK_FLOPS = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "A10G": (125e12, 62.5e12),
    "L4": (121e12, 60e12),
    "V100": (125e12, 15.7e12),
    "RTX 4090": (165e12, 82.6e12),
}


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LmforgeError("train.device: cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float | None:
    """The device's dense peak for ``dtype``, or None where it is not known (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (half, tf32) in PEAK_FLOPS.items():
        if fragment in name:
            return half if dtype in (torch.bfloat16, torch.float16) else tf32
    return None
